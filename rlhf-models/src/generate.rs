//! Batched sampling with a KV cache: repetition penalty, temperature, top-k, top-p, min-p, min/max
//! new tokens, stop at EOS per sequence, seeded.
//!
//! The next-token distribution of each row is read to the host once per step (`[rows, vocab]`)
//! and sampled there. Every row draws from a generator of its own, seeded from the caller's
//! (one `u64` per row, in row order), so a row's tokens depend on the seed and on its prompt
//! only, not on how the batch is split across threads nor on when the other rows finish. (Its
//! logits do, by float rounding: a product over fewer rows may round differently. A token
//! changes only when a draw falls within that rounding of a boundary between two tokens.)
//!
//! The decode loop:
//! - the KV cache holds prompt + `max_new_tokens` positions from the start and is written in
//!   place ([`KvCache::with_capacity`]);
//! - a row that has emitted EOS leaves the batch: its keys and values are dropped from the cache
//!   and later steps compute only the rows still going;
//! - on the flex backend, whose products at decode shapes are too small to be split across the
//!   CPU's threads, the rows are split instead: into as many parts as rayon has threads (at least
//!   [`MIN_ROWS_PER_PART`] rows each), decoded in parallel (callers generate from a model without
//!   autodiff, `valid()`; with autodiff the batch stays whole);
//! - without a top-k or top-p filter, a row is sampled by walking its vocabulary in token-id order
//!   (no sort);
//! - with a repetition penalty, each row keeps the sorted ids of its real prompt tokens and of
//!   the tokens it has emitted (left padding is not among them).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use rlhf_core::Result;
use serde::{Deserialize, Serialize};

use rlhf_data::{Tokenizer, collate};

use crate::cache::KvCache;
use crate::lm::CausalLm;

/// On flex, the fewest rows a part of the batch decoded on its own thread has.
pub const MIN_ROWS_PER_PART: usize = 4;

/// How to sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingConfig {
    /// Tokens to generate at most.
    pub max_new_tokens: usize,
    /// EOS and the stop ids are suppressed until this many tokens have been generated.
    pub min_new_tokens: usize,
    /// Softmax temperature; 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep only the `k` most likely tokens (exactly `k`: of tokens tied at the `k`-th logit the
    /// lower ids, where transformers keeps every tied one); 0 keeps all, as in transformers.
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability reaches `p`; 1 or more
    /// keeps all, as in transformers.
    pub top_p: Option<f32>,
    /// After top-k and top-p, keep only the tokens at least `min_p` times as likely as the most
    /// likely one (transformers' and vLLM's `min_p`); 0 keeps all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f32>,
    /// CTRL's repetition penalty θ, as transformers applies it: before the temperature, the logit
    /// `l` of every token that the row's prompt or its continuation so far holds becomes `l / θ`
    /// when positive and `l · θ` otherwise; 1 is off. The ids of a left-padded row's padding are
    /// not penalised (they are not the row's text), as transformers 5 skips them (4 did not).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repetition_penalty: Option<f32>,
    /// The end-of-sequence token; a row stops after emitting it.
    pub eos_id: Option<u32>,
    /// Further tokens that end a row as EOS does (a checkpoint's `generation_config.json` may
    /// list several: [`rlhf_data::Tokenizer::stop_ids`]); a row that ends with one counts as
    /// having emitted EOS.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stop_ids: Vec<u32>,
    /// Use the KV cache (the same result, much faster); off only to check it.
    pub use_cache: bool,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            max_new_tokens: 32,
            min_new_tokens: 0,
            temperature: 0.7,
            top_k: None,
            top_p: None,
            min_p: None,
            repetition_penalty: None,
            eos_id: None,
            stop_ids: Vec::new(),
            use_cache: true,
        }
    }
}

impl SamplingConfig {
    /// These settings, ending rows at `tokenizer`'s EOS and at its other stop ids as well as at
    /// any stop ids they already hold.
    pub fn ending_as(self, tokenizer: &Tokenizer) -> Self {
        let mut stop_ids = self.stop_ids.clone();
        stop_ids.extend(tokenizer.stop_ids());
        stop_ids.sort_unstable();
        stop_ids.dedup();
        SamplingConfig {
            eos_id: Some(tokenizer.eos_id()),
            stop_ids,
            ..self
        }
    }

    /// Refuses settings that sample from no distribution ([`Self::problem`]). Trainers add their
    /// own conditions (a temperature above 0, …).
    pub fn check(&self) -> Result<()> {
        match self.problem() {
            Some(m) => Err(rlhf_core::Error::Config(m)),
            None => Ok(()),
        }
    }

    /// What is wrong with these settings, if anything: a negative or non-finite temperature, a
    /// top-p outside `(0, 1]`, a min-p outside `[0, 1]`, a repetition penalty that is not a
    /// finite number above 0.
    pub fn problem(&self) -> Option<String> {
        let t = self.temperature;
        if !t.is_finite() || t < 0.0 {
            return Some(format!(
                "temperature must be finite and ≥ 0 (0: greedy), got {t}"
            ));
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Some(format!("top_p must be in (0, 1], got {p}"));
        }
        if let Some(m) = self.min_p
            && !(0.0..=1.0).contains(&m)
        {
            return Some(format!("min_p must be in [0, 1], got {m}"));
        }
        if let Some(r) = self.repetition_penalty
            && !(r.is_finite() && r > 0.0)
        {
            return Some(format!(
                "repetition_penalty must be finite and > 0 (1: off), got {r}"
            ));
        }
        None
    }

    /// The repetition penalty, when it changes anything.
    fn penalty(&self) -> Option<f32> {
        self.repetition_penalty.filter(|&r| r != 1.0)
    }

    /// Whether `token` ends a row: EOS or one of the stop ids.
    fn ends(&self, token: u32) -> bool {
        Some(token) == self.eos_id || self.stop_ids.contains(&token)
    }
}

/// Generated continuations, row-major `[batch, new]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Rows.
    pub batch: usize,
    /// Columns (the longest continuation).
    pub new_len: usize,
    /// Token ids; after a row's end (EOS or a stop id), further ids are the EOS id (or 0) and
    /// masked.
    pub tokens: Vec<u32>,
    /// Log-probability of each token under the distribution it was sampled from (tempered and
    /// filtered; for greedy decoding, the untempered softmax). 0 where masked.
    pub logprobs: Vec<f32>,
    /// 1 up to and including a row's end (EOS or a stop id), 0 after it.
    pub mask: Vec<u8>,
    /// Whether each row ended with EOS or a stop id.
    pub has_eos: Vec<bool>,
}

/// The sampling distribution of one row: the tokens it may emit and their log-probabilities, in
/// token-id order. In transformers' order: the logits of the `seen` tokens (the row's text so
/// far) take the repetition penalty, all are divided by the temperature, with `suppress` (before
/// `min_new_tokens`) EOS and the stop ids are removed, top-k, top-p and min-p keep the most likely
/// tokens (ties broken by the lower id), and what is kept is renormalised. Greedy decoding
/// (temperature 0), as transformers', takes neither the temperature nor the three filters: its
/// distribution is the softmax of the penalised logits.
fn distribution(
    logits: &[f32],
    cfg: &SamplingConfig,
    suppress: bool,
    seen: &[u32],
) -> Vec<(u32, f32)> {
    let temperature = if cfg.temperature > 0.0 {
        cfg.temperature
    } else {
        1.0
    };
    let mut cand: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, l / temperature))
        .collect();
    // dividing by a temperature > 0 keeps the sign, so penalising after it is penalising before
    if let Some(theta) = cfg.penalty() {
        for &id in seen {
            if let Some(c) = cand.get_mut(id as usize) {
                c.1 = if c.1 < 0.0 { c.1 * theta } else { c.1 / theta };
            }
        }
    }
    if suppress {
        cand.retain(|c| !cfg.ends(c.0));
    }
    // as transformers: a top-k of 0 and a top-p of 1 or more keep every token, and greedy
    // decoding filters nothing
    let sampling = cfg.temperature > 0.0;
    let top_k = cfg.top_k.filter(|&k| sampling && k > 0);
    let top_p = cfg.top_p.filter(|&p| sampling && p < 1.0);
    if top_k.is_some() || top_p.is_some() {
        cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if let Some(k) = top_k {
            cand.truncate(k);
        }
        if let Some(p) = top_p {
            let mut mass = 0.0;
            let keep = log_softmax(&cand)
                .iter()
                .position(|lp| {
                    mass += lp.exp();
                    mass >= p
                })
                .map_or(cand.len(), |i| i + 1);
            cand.truncate(keep.max(1));
        }
        cand.sort_unstable_by_key(|c| c.0);
    }
    if let Some(m) = cfg.min_p.filter(|&m| sampling && m > 0.0) {
        // p / p_max = exp(l − l_max): the most likely token always stays (a NaN, of an infinite
        // logit, stays too, so that a row of such logits still has a token to draw)
        let top = cand.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
        cand.retain(|c| {
            let share = (c.1 - top).exp();
            share.is_nan() || share >= m
        });
    }
    let logps = log_softmax(&cand);
    cand.into_iter()
        .zip(logps)
        .map(|((t, _), lp)| (t, lp))
        .collect()
}

/// The candidates' log-probabilities, `(l − m) − ln Σ exp(l − m)` with `m` the largest logit:
/// the largest is subtracted before anything is added, so logits in the thousands keep the
/// precision of their differences (`l − (m + ln Σ …)` would round the sum at their scale).
fn log_softmax(cand: &[(u32, f32)]) -> Vec<f32> {
    let m = cand.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
    let z = cand.iter().map(|c| (c.1 - m).exp()).sum::<f32>().ln();
    cand.iter().map(|c| (c.1 - m) - z).collect()
}

/// One token from `dist` (id order): the most likely one (the lower id on ties) when greedy;
/// otherwise the first whose cumulative probability exceeds a uniform draw from `rng`.
fn sample(dist: &[(u32, f32)], greedy: bool, rng: &mut impl Rng) -> (u32, f32) {
    let most_likely = || {
        *dist
            .iter()
            .reduce(|best, c| if c.1 > best.1 { c } else { best })
            .expect("a distribution has at least one token")
    };
    if greedy {
        return most_likely();
    }
    let u: f32 = rng.random();
    let mut acc = 0.0;
    for &(t, lp) in dist {
        acc += lp.exp();
        if u < acc {
            return (t, lp);
        }
    }
    // rounding left the total mass below the draw: the last token that has any
    dist.iter()
        .rev()
        .find(|c| c.1.exp() > 0.0)
        .copied()
        .unwrap_or_else(most_likely)
}

/// The continuations of some rows, one vector per row (as long as the row ran).
struct Rows {
    tokens: Vec<Vec<u32>>,
    logprobs: Vec<Vec<f32>>,
    eos: Vec<bool>,
}

/// The `rows` rows of `len` items of a row-major buffer, one vector each.
fn split_rows<T: Clone>(flat: &[T], rows: usize, len: usize) -> Vec<Vec<T>> {
    (0..rows)
        .map(|r| flat[r * len..(r + 1) * len].to_vec())
        .collect()
}

/// Each row's text so far as the repetition penalty reads it: the ids of its real tokens (mask
/// 1, not its left padding), sorted and without repeats; empty rows without a penalty.
fn texts_for_penalty(cfg: &SamplingConfig, ids: &[Vec<u32>], mask: &[Vec<u8>]) -> Vec<Vec<u32>> {
    ids.iter()
        .zip(mask)
        .map(|(ids, mask)| {
            if cfg.penalty().is_none() {
                return Vec::new();
            }
            let mut text: Vec<u32> = ids
                .iter()
                .zip(mask)
                .filter(|&(_, &m)| m == 1)
                .map(|(&t, _)| t)
                .collect();
            text.sort_unstable();
            text.dedup();
            text
        })
        .collect()
}

/// Decodes `rows` left-padded prompts, each row with the generator seeded by its `seeds` entry.
fn decode(
    model: &CausalLm,
    prompt_ids: &[u32],
    prompt_mask: &[u8],
    rows: usize,
    cfg: &SamplingConfig,
    seeds: &[u64],
) -> Result<Rows> {
    let prompt_len = prompt_ids.len() / rows.max(1);
    let mut rngs: Vec<ChaCha8Rng> = seeds
        .iter()
        .map(|&s| ChaCha8Rng::seed_from_u64(s))
        .collect();
    let mut ids = split_rows(prompt_ids, rows, prompt_len);
    let mut mask = split_rows(prompt_mask, rows, prompt_len);
    let mut out = Rows {
        tokens: vec![Vec::new(); rows],
        logprobs: vec![Vec::new(); rows],
        eos: vec![false; rows],
    };
    let mut seen = texts_for_penalty(cfg, &ids, &mask);
    let mut active: Vec<usize> = (0..rows).collect();
    let mut cache = KvCache::with_capacity(prompt_len + cfg.max_new_tokens);
    let greedy = cfg.temperature <= 0.0;
    for step in 0..cfg.max_new_tokens {
        if active.is_empty() {
            break;
        }
        let n = active.len();
        let attention: Vec<u8> = active
            .iter()
            .flat_map(|&r| mask[r].iter().copied())
            .collect();
        let hidden = if cfg.use_cache && step > 0 {
            // only the newest token of each row; the cache holds the rest
            let newest: Vec<u32> = active.iter().map(|&r| ids[r][ids[r].len() - 1]).collect();
            model.hidden(&model.input(&newest, &attention, n)?, Some(&mut cache))
        } else {
            let all: Vec<u32> = active
                .iter()
                .flat_map(|&r| ids[r].iter().copied())
                .collect();
            let input = model.input(&all, &attention, n)?;
            model.hidden(&input, cfg.use_cache.then_some(&mut cache))
        };
        // the LM head only where the next token is read: the prompt's other positions need none
        let [_, t, _] = hidden.dims();
        let logits = model.lm_head(hidden.narrow(1, t - 1, 1));
        let [_, _, vocab] = logits.dims();
        let last = rlhf_core::host::to_f32_vec(logits); // [n, vocab]
        let suppress = step < cfg.min_new_tokens;
        for (i, &r) in active.iter().enumerate() {
            let logits = &last[i * vocab..(i + 1) * vocab];
            let dist = distribution(logits, cfg, suppress, &seen[r]);
            let (tok, lp) = sample(&dist, greedy, &mut rngs[r]);
            if cfg.penalty().is_some()
                && let Err(at) = seen[r].binary_search(&tok)
            {
                seen[r].insert(at, tok);
            }
            out.tokens[r].push(tok);
            out.logprobs[r].push(lp);
            ids[r].push(tok);
            mask[r].push(1);
            out.eos[r] = cfg.ends(tok);
        }
        if active.iter().any(|&r| out.eos[r]) {
            let going: Vec<usize> = (0..n).filter(|&i| !out.eos[active[i]]).collect();
            if cfg.use_cache && !going.is_empty() {
                cache.select_rows(&going);
            }
            active = going.into_iter().map(|i| active[i]).collect();
        }
    }
    Ok(out)
}

/// Samples continuations of left-padded prompts.
///
/// - `prompt_ids`, `prompt_mask`: `[batch, prompt_len]`, left-padded (pads may hold any id, even
///   one outside the vocabulary: the model reads them through [`crate::TokenInput`]);
/// - `rng`: the run's generator; it draws one `u64` per row, which seeds that row's sampling.
///
/// Fails when a real prompt token lies outside the model's vocabulary, or when `cfg` samples from
/// no distribution ([`SamplingConfig::check`]).
pub fn generate(
    model: &CausalLm,
    prompt_ids: &[u32],
    prompt_mask: &[u8],
    batch: usize,
    cfg: &SamplingConfig,
    rng: &mut impl Rng,
) -> Result<Generation> {
    cfg.check()?;
    // not on an autodiff device: burn-autodiff 0.22.1 can deadlock when passes run at once
    let device = model.device();
    let parts = if rlhf_core::device::is_flex(&device) && !device.is_autodiff() {
        rayon::current_num_threads().min(batch / MIN_ROWS_PER_PART)
    } else {
        1
    };
    generate_in_parts(model, prompt_ids, prompt_mask, batch, cfg, rng, parts)
}

/// [`generate`] with the rows split into `parts` contiguous parts (at least one), decoded in
/// parallel on rayon's threads.
fn generate_in_parts(
    model: &CausalLm,
    prompt_ids: &[u32],
    prompt_mask: &[u8],
    batch: usize,
    cfg: &SamplingConfig,
    rng: &mut impl Rng,
    parts: usize,
) -> Result<Generation> {
    let prompt_len = prompt_ids.len() / batch.max(1);
    let seeds: Vec<u64> = (0..batch).map(|_| rng.random()).collect();
    let parts = parts.clamp(1, batch.max(1));
    let bounds: Vec<(usize, usize)> = (0..parts)
        .map(|p| (p * batch / parts, (p + 1) * batch / parts))
        .collect();
    let run = |&(from, to): &(usize, usize)| {
        let (a, b) = (from * prompt_len, to * prompt_len);
        let (ids, mask) = (&prompt_ids[a..b], &prompt_mask[a..b]);
        decode(model, ids, mask, to - from, cfg, &seeds[from..to])
    };
    let decoded: Vec<Rows> = if parts == 1 {
        bounds.iter().map(run).collect::<Result<_>>()?
    } else {
        bounds.par_iter().map(run).collect::<Result<_>>()?
    };
    let rows = || {
        decoded
            .iter()
            .flat_map(|d| (0..d.eos.len()).map(move |r| (d, r)))
    };
    let new_len = rows().map(|(d, r)| d.tokens[r].len()).max().unwrap_or(0);
    let filler = cfg.eos_id.unwrap_or(0);
    let (mut tokens, mut logprobs, mut mask, mut has_eos) = (
        Vec::with_capacity(batch * new_len),
        Vec::with_capacity(batch * new_len),
        Vec::with_capacity(batch * new_len),
        Vec::with_capacity(batch),
    );
    for (d, r) in rows() {
        let kept = d.tokens[r].len();
        tokens.extend_from_slice(&d.tokens[r]);
        tokens.extend(std::iter::repeat_n(filler, new_len - kept));
        logprobs.extend_from_slice(&d.logprobs[r]);
        logprobs.extend(std::iter::repeat_n(0.0, new_len - kept));
        mask.extend(std::iter::repeat_n(1u8, kept));
        mask.extend(std::iter::repeat_n(0u8, new_len - kept));
        has_eos.push(d.eos[r]);
    }
    Ok(Generation {
        batch,
        new_len,
        tokens,
        logprobs,
        mask,
        has_eos,
    })
}

/// One sampled continuation per prompt row (see [`sample_responses`]).
#[derive(Debug, Clone)]
pub struct Responses {
    /// The kept tokens of each row (up to and including its end, EOS or a stop id).
    pub tokens: Vec<Vec<u32>>,
    /// Their texts (the EOS token's text at the end when the row ended, whichever token ended
    /// it: [`Tokenizer::decode_response`]).
    pub texts: Vec<String>,
    /// Whether each row ended with EOS or a stop id.
    pub has_eos: Vec<bool>,
}

/// Samples one continuation of each prompt (token ids): left-pad, [`generate`] ending rows at the
/// tokenizer's EOS and stop ids ([`SamplingConfig::ending_as`]), and decode what each row kept
/// ([`Tokenizer::decode_response`]).
pub fn sample_responses(
    model: &CausalLm,
    tokenizer: &Tokenizer,
    prompts: &[&[u32]],
    cfg: &SamplingConfig,
    rng: &mut impl Rng,
) -> Result<Responses> {
    let pairs: Vec<(&[u32], &[u32])> = prompts.iter().map(|p| (*p, &[][..])).collect();
    let (ids, mask) = collate(&pairs, tokenizer.pad_id(), None).prompts();
    let cfg = cfg.clone().ending_as(tokenizer);
    let g = generate(model, &ids, &mask, prompts.len(), &cfg, rng)?;
    let tokens: Vec<Vec<u32>> = (0..g.batch)
        .map(|b| {
            (b * g.new_len..(b + 1) * g.new_len)
                .filter(|&i| g.mask[i] == 1)
                .map(|i| g.tokens[i])
                .collect()
        })
        .collect();
    let texts = tokens
        .iter()
        .map(|t| tokenizer.decode_response(t))
        .collect::<Result<Vec<_>>>()?;
    Ok(Responses {
        tokens,
        texts,
        has_eos: g.has_eos,
    })
}

/// Each prompt's token ids as the tokenizer begins a text (Llama's BOS), cut to
/// `max_prompt_length` keeping that start and the last tokens (`None`: whole), for a trainer that
/// samples responses to them (`label` names it in errors). A prompt without a token is an error:
/// its first response token would have no context (an empty text with BOS before it has one).
pub fn encode_prompts(
    tok: &Tokenizer,
    prompts: &[String],
    max_prompt_length: Option<usize>,
    label: &str,
) -> Result<Vec<Vec<u32>>> {
    prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let ids = tok.encode_prompt(p, max_prompt_length.unwrap_or(usize::MAX))?;
            if ids.is_empty() {
                return Err(rlhf_core::Error::Config(format!(
                    "{label}: prompt {i} is empty; its first response token would have no context"
                )));
            }
            Ok(ids)
        })
        .collect()
}

/// Samples one continuation of each prompt text: tokenize as a text begins (Llama's BOS), then
/// [`sample_responses`]. Returns the token ids and the texts, one per prompt.
pub fn sample_texts(
    model: &CausalLm,
    tokenizer: &Tokenizer,
    prompts: &[&str],
    cfg: &SamplingConfig,
    rng: &mut impl Rng,
) -> Result<(Vec<Vec<u32>>, Vec<String>)> {
    let ids = prompts
        .iter()
        .map(|p| tokenizer.encode_start(p))
        .collect::<Result<Vec<_>>>()?;
    let rows: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    let r = sample_responses(model, tokenizer, &rows, cfg, rng)?;
    Ok((r.tokens, r.texts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TransformerConfig;

    fn unfiltered(temperature: f32) -> SamplingConfig {
        SamplingConfig {
            temperature,
            ..Default::default()
        }
    }

    fn most_likely(dist: &[(u32, f32)]) -> (u32, f32) {
        sample(dist, true, &mut ChaCha8Rng::seed_from_u64(0))
    }

    #[test]
    fn filters_keep_what_they_promise_and_renormalise() {
        let logits = [2.0f32, 1.0, 0.5, -1.0, 3.0];
        let mass = |d: &[(u32, f32)]| d.iter().map(|x| x.1.exp()).sum::<f32>();
        let ids = |d: &[(u32, f32)]| d.iter().map(|x| x.0).collect::<Vec<_>>();
        let all = distribution(&logits, &unfiltered(1.0), false, &[]);
        assert_eq!(ids(&all), vec![0, 1, 2, 3, 4], "every token, in id order");
        assert_eq!(most_likely(&all).0, 4);
        assert!((mass(&all) - 1.0).abs() < 1e-5);
        let k2 = distribution(
            &logits,
            &SamplingConfig {
                top_k: Some(2),
                ..unfiltered(1.0)
            },
            false,
            &[],
        );
        assert_eq!(ids(&k2), vec![0, 4]);
        assert!((mass(&k2) - 1.0).abs() < 1e-5);
        let p = distribution(
            &logits,
            &SamplingConfig {
                top_p: Some(0.7),
                ..unfiltered(1.0)
            },
            false,
            &[],
        );
        // p(4) ≈ 0.62 < 0.7; adding token 0 (≈ 0.23) passes it
        assert_eq!(ids(&p), vec![0, 4], "{p:?}");
        let ends = SamplingConfig {
            eos_id: Some(4),
            stop_ids: vec![1],
            ..unfiltered(1.0)
        };
        let no_eos = distribution(&logits, &ends, true, &[]);
        assert_eq!(
            ids(&no_eos),
            vec![0, 2, 3],
            "EOS and the stop ids suppressed"
        );
        assert_eq!(ids(&distribution(&logits, &ends, false, &[])).len(), 5);
        // a lower temperature sharpens the distribution
        let cold = distribution(&logits, &unfiltered(0.5), false, &[]);
        assert!(most_likely(&cold).1 > most_likely(&all).1);
    }

    /// The sampling distribution against an f64 reading of transformers' processors.
    mod processors {
        use super::*;
        use proptest::prelude::*;

        /// transformers' logits processors in f64, written from their definitions: the repetition
        /// penalty on the `seen` ids (`l / θ` when positive, `l · θ` otherwise), the temperature,
        /// top-k (the `k` largest, lower ids first on ties), top-p (the shortest prefix of the sorted
        /// tokens whose mass reaches `p`), min-p (`p ≥ min_p · p_max`), then the log-softmax of what
        /// is kept, in id order; with `suppress`, EOS and the stop ids are out before the filters
        /// (transformers' `MinNewTokensLengthLogitsProcessor` sets them to −∞); greedy decoding
        /// (temperature 0) takes neither the temperature nor the filters. `None` when a cut-off
        /// lies within `1e-4` of a token, where the f32 path may round to the other side.
        fn warped_f64(
            logits: &[f32],
            cfg: &SamplingConfig,
            seen: &[u32],
            suppress: bool,
            slack: f64,
        ) -> Option<Vec<(u32, f64)>> {
            let near = |a: f64, b: f64| (a - b).abs() < 1e-4 + slack;
            let greedy = cfg.temperature <= 0.0;
            let t = if greedy {
                1.0
            } else {
                f64::from(cfg.temperature)
            };
            let mut l: Vec<f64> = logits.iter().map(|&x| f64::from(x)).collect();
            if let Some(theta) = cfg.repetition_penalty.map(f64::from) {
                let unique: std::collections::BTreeSet<u32> = seen.iter().copied().collect();
                for id in unique {
                    let x = &mut l[id as usize];
                    *x = if *x < 0.0 { *x * theta } else { *x / theta };
                }
            }
            let l: Vec<f64> = l.iter().map(|x| x / t).collect();
            let mut order: Vec<usize> = (0..l.len())
                .filter(|&i| !(suppress && cfg.ends(i as u32)))
                .collect();
            order.sort_by(|&a, &b| l[b].total_cmp(&l[a]).then(a.cmp(&b)));
            if let Some(k) = cfg.top_k.filter(|&k| !greedy && k > 0 && k < order.len()) {
                if near(l[order[k - 1]], l[order[k]]) {
                    return None;
                }
                order.truncate(k);
            }
            let log_softmax = |ids: &[usize]| {
                let m = ids.iter().map(|&i| l[i]).fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = ids.iter().map(|&i| (l[i] - m).exp()).sum::<f64>().ln();
                ids.iter().map(|&i| l[i] - m - z).collect::<Vec<f64>>()
            };
            if let Some(p) = cfg.top_p.map(f64::from).filter(|&p| !greedy && p < 1.0) {
                let mut mass = 0.0;
                let mut keep = order.len();
                for (j, q) in log_softmax(&order).into_iter().enumerate() {
                    mass += q.exp();
                    if near(mass, p) {
                        return None;
                    }
                    if mass >= p {
                        keep = j + 1;
                        break;
                    }
                }
                order.truncate(keep);
            }
            if let Some(m) = cfg.min_p.map(f64::from).filter(|&m| !greedy && m > 0.0) {
                let top = l[order[0]];
                if order.iter().any(|&i| near((l[i] - top).exp(), m)) {
                    return None;
                }
                order.retain(|&i| (l[i] - top).exp() >= m);
            }
            order.sort_unstable();
            let logps = log_softmax(&order);
            Some(order.iter().map(|&i| i as u32).zip(logps).collect())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Every combination of the filters, with EOS suppressed or not, keeps the tokens that
            /// the f64 reading of transformers' processors keeps, with the same log-probabilities;
            /// the kept mass is 1 and every log-probability finite, for logits up to ±10⁴.
            #[test]
            fn the_distribution_is_transformers_processors(
                logits in proptest::collection::vec(
                    prop_oneof![4 => -8.0f32..8.0, 1 => -1e4f32..1e4],
                    3..40,
                ),
                seen_draw in proptest::collection::vec(0usize..1000, 0..12),
                temperature in prop_oneof![Just(0.0f32), 0.2f32..2.0],
                top_k in proptest::option::of(0usize..45),
                top_p in proptest::option::of(0.05f32..=1.0),
                min_p in proptest::option::of(0.0f32..=1.0),
                repetition_penalty in proptest::option::of(0.3f32..4.0),
                // EOS and a stop id suppressed (before `min_new_tokens`) or not
                suppress in any::<bool>(),
                ends in (0u32..1000, 0u32..1000),
            ) {
                let mut seen: Vec<u32> = seen_draw.iter().map(|&i| (i % logits.len()) as u32).collect();
                seen.sort_unstable();
                seen.dedup();
                let cfg = SamplingConfig {
                    temperature,
                    top_k,
                    top_p,
                    min_p,
                    repetition_penalty,
                    eos_id: Some(ends.0 % logits.len() as u32),
                    stop_ids: vec![ends.1 % logits.len() as u32],
                    ..Default::default()
                };
                // the f32 path rounds the tempered, penalised logits at their own scale: cut-offs
                // and log-probs are compared within a few of its ulps
                let theta = repetition_penalty.map_or(1.0, |r| f64::from(r.max(1.0 / r)));
                let t = if temperature > 0.0 { f64::from(temperature) } else { 1.0 };
                let largest = logits.iter().fold(0.0f64, |a, &l| a.max(f64::from(l.abs())));
                let slack = 8.0 * f64::from(f32::EPSILON) * largest * theta / t;
                let Some(want) = warped_f64(&logits, &cfg, &seen, suppress, slack) else {
                    return Err(TestCaseError::reject("a cut-off within rounding of a token"));
                };
                let got = distribution(&logits, &cfg, suppress, &seen);
                let ids = |d: &[(u32, f32)]| d.iter().map(|x| x.0).collect::<Vec<_>>();
                prop_assert_eq!(ids(&got), want.iter().map(|x| x.0).collect::<Vec<_>>());
                for ((_, a), (_, b)) in got.iter().zip(&want) {
                    prop_assert!(a.is_finite());
                    let tolerance = 1e-3 * (1.0 + b.abs()) + slack;
                    prop_assert!((f64::from(*a) - b).abs() < tolerance, "{a} vs {b}");
                }
                let mass: f32 = got.iter().map(|x| x.1.exp()).sum();
                prop_assert!((mass - 1.0).abs() < 1e-4);
            }
        }
    }

    /// The repetition penalty's two sides: a positive logit is divided by θ, a negative one
    /// multiplied, so θ > 1 makes a seen token less likely whatever its sign and θ < 1 more;
    /// min-p keeps the most likely token even at 1.
    #[test]
    fn the_penalty_and_min_p_do_what_they_say() {
        let logits = [2.0f32, -1.0, 0.5, 1.5];
        let p = |cfg: &SamplingConfig, seen: &[u32], t: u32| {
            let d = distribution(&logits, cfg, false, seen);
            d.iter().find(|x| x.0 == t).map_or(0.0, |x| x.1.exp())
        };
        let plain = unfiltered(1.0);
        let with = |theta| SamplingConfig {
            repetition_penalty: Some(theta),
            ..unfiltered(1.0)
        };
        for t in [0u32, 1] {
            assert!(
                p(&with(2.0), &[t], t) < p(&plain, &[t], t),
                "token {t}, θ 2"
            );
            assert!(
                p(&with(0.5), &[t], t) > p(&plain, &[t], t),
                "token {t}, θ 0.5"
            );
        }
        assert_eq!(p(&with(2.0), &[], 0), p(&plain, &[], 0), "nothing seen");
        let only_top = SamplingConfig {
            min_p: Some(1.0),
            ..unfiltered(1.0)
        };
        assert_eq!(distribution(&logits, &only_top, false, &[]), vec![(0, 0.0)]);
    }

    /// The walk in id order draws each token with its probability: over many draws the
    /// frequencies match the distribution.
    #[test]
    fn sampling_draws_each_token_with_its_probability() {
        let logits = [0.3f32, -2.0, 1.5, 0.0, 1.0, -0.5];
        let dist = distribution(&logits, &unfiltered(0.7), false, &[]);
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let draws = 200_000;
        let mut counts = [0usize; 6];
        for _ in 0..draws {
            counts[sample(&dist, false, &mut rng).0 as usize] += 1;
        }
        for (t, lp) in dist {
            let (p, f) = (
                f64::from(lp.exp()),
                counts[t as usize] as f64 / draws as f64,
            );
            let sd = (p * (1.0 - p) / draws as f64).sqrt();
            assert!(
                (f - p).abs() < 5.0 * sd,
                "token {t}: frequency {f}, probability {p}"
            );
        }
    }

    /// Tiny models whose vocabulary of 12 tokens makes EOS (id 1) frequent, so that rows
    /// finish at different steps.
    fn tiny(preset: &str) -> CausalLm {
        let device = rlhf_core::device_from_env().expect("RLHF_DEVICE");
        device.seed(5);
        let mut config = TransformerConfig::preset(preset).expect("preset");
        config.vocab_size = 12;
        CausalLm::init(&config, &device).expect("init")
    }

    /// With a repetition penalty, every step penalises exactly the row's real prompt tokens and
    /// the tokens it has emitted, not its left padding: greedy decoding picks, at each step, the
    /// most likely token of the model's logits for that row alone (unpadded, a full pass) with
    /// those ids penalised (in f64).
    #[test]
    fn the_repetition_penalty_reads_each_row_text_and_not_its_padding() {
        let model = tiny("tiny-llama-1m");
        let (rows, prompt_len, pads) = (12, 5, 2);
        let ids: Vec<u32> = (0..rows * prompt_len)
            .map(|i| {
                let (r, j) = (i / prompt_len, i % prompt_len);
                // every row's padding holds another id (pads may hold any id)
                if j < pads {
                    r as u32
                } else {
                    2 + (i * 7 % 10) as u32
                }
            })
            .collect();
        let mask: Vec<u8> = (0..rows * prompt_len)
            .map(|i| u8::from(i % prompt_len >= pads))
            .collect();
        let cfg = SamplingConfig {
            max_new_tokens: 8,
            temperature: 0.0,
            repetition_penalty: Some(3.0),
            ..Default::default()
        };
        let run = |cfg: &SamplingConfig| {
            generate_in_parts(
                &model,
                &ids,
                &mask,
                rows,
                cfg,
                &mut ChaCha8Rng::seed_from_u64(0),
                1,
            )
            .expect("generate")
        };
        let g = run(&cfg);
        let plain = run(&SamplingConfig {
            repetition_penalty: None,
            ..cfg.clone()
        });
        assert_ne!(
            g.tokens, plain.tokens,
            "the penalty changes the greedy rows"
        );
        let n = g.new_len;
        assert_eq!(n, 8, "no EOS: every row runs to the end");
        for r in 0..rows {
            let mut text: Vec<u32> = ids[r * prompt_len + pads..(r + 1) * prompt_len].to_vec();
            for step in 0..n {
                let input = model.input(&text, &vec![1; text.len()], 1).expect("input");
                let logits = model.forward(&input, None);
                let [_, t, vocab] = logits.dims();
                let last = rlhf_core::host::to_f32_vec(logits.narrow(1, t - 1, 1));
                assert_eq!(last.len(), vocab);
                let penalised: Vec<f64> = last
                    .iter()
                    .enumerate()
                    .map(|(id, &l)| {
                        let l = f64::from(l);
                        match (text.contains(&(id as u32)), l < 0.0) {
                            (false, _) => l,
                            (true, true) => l * 3.0,
                            (true, false) => l / 3.0,
                        }
                    })
                    .collect();
                let mut order: Vec<usize> = (0..vocab).collect();
                order.sort_by(|&a, &b| penalised[b].total_cmp(&penalised[a]));
                let got = g.tokens[r * n + step];
                if penalised[order[0]] - penalised[order[1]] > 1e-3 {
                    assert_eq!(got, order[0] as u32, "row {r}, step {step}");
                }
                text.push(got);
            }
        }
    }

    /// However the rows are split across threads, and whichever rows finish early, every row
    /// gets the same tokens (and log-probabilities up to rounding), and finished rows are filled
    /// and masked.
    #[test]
    fn splitting_the_rows_and_dropping_finished_ones_change_nothing() {
        for preset in ["tiny-4m", "tiny-llama-1m"] {
            let model = tiny(preset);
            let rows = 12;
            let prompt_len = 5;
            let ids: Vec<u32> = (0..rows * prompt_len)
                .map(|i| 2 + (i * 7 % 10) as u32)
                .collect();
            // left padding on every third row
            let mask: Vec<u8> = (0..rows * prompt_len)
                .map(|i| u8::from(!((i / prompt_len) % 3 == 0 && i % prompt_len < 2)))
                .collect();
            let run = |parts: usize, cfg: &SamplingConfig| {
                let mut rng = ChaCha8Rng::seed_from_u64(11);
                generate_in_parts(&model, &ids, &mask, rows, cfg, &mut rng, parts)
                    .expect("generate")
            };
            // the case needs rows that finish early and rows that do not: the longest run that
            // has both (how likely EOS is depends on the backend's random initialisation)
            let (cfg, whole) = [16, 8, 4, 2]
                .into_iter()
                .map(|max_new_tokens| {
                    let cfg = SamplingConfig {
                        max_new_tokens,
                        temperature: 1.0,
                        eos_id: Some(1),
                        ..Default::default()
                    };
                    let whole = run(1, &cfg);
                    (cfg, whole)
                })
                .find(|(_, g)| {
                    let finished = g.has_eos.iter().filter(|&&e| e).count();
                    finished > 0 && finished < rows
                })
                .unwrap_or_else(|| panic!("{preset}: no length has rows finishing and not"));
            let run = |parts: usize| run(parts, &cfg);
            for parts in [2, 3, 12] {
                // other row counts per product change the rounding of a row's logits, nothing else
                let split = run(parts);
                assert_eq!(split.tokens, whole.tokens, "{preset}: {parts} parts");
                assert_eq!((split.new_len, &split.mask), (whole.new_len, &whole.mask));
                assert_eq!(split.has_eos, whole.has_eos, "{preset}: {parts} parts");
                let worst = split
                    .logprobs
                    .iter()
                    .zip(&whole.logprobs)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                assert!(
                    worst < 1e-5,
                    "{preset}: {parts} parts: log-probs differ by {worst}"
                );
            }
            let n = whole.new_len;
            for r in 0..rows {
                let (tok, m) = (&whole.tokens[r * n..][..n], &whole.mask[r * n..][..n]);
                let kept = m.iter().filter(|&&x| x == 1).count();
                assert!(
                    m[..kept].iter().all(|&x| x == 1),
                    "{preset}: mask is a prefix"
                );
                if whole.has_eos[r] {
                    assert_eq!(tok[kept - 1], 1, "{preset}: a finished row ends at EOS");
                    assert!(tok[kept..].iter().all(|&t| t == 1), "{preset}: EOS filler");
                    assert!(
                        whole.logprobs[r * n + kept..][..n - kept]
                            .iter()
                            .all(|&l| l == 0.0)
                    );
                } else {
                    assert_eq!(kept, n, "{preset}: an unfinished row runs to the end");
                }
            }
            // the full forward pass at every step samples the same tokens
            let mut rng = ChaCha8Rng::seed_from_u64(11);
            let no_cache = SamplingConfig {
                use_cache: false,
                ..cfg.clone()
            };
            let full = generate_in_parts(&model, &ids, &mask, rows, &no_cache, &mut rng, 2)
                .expect("generate");
            assert_eq!(full.tokens, whole.tokens, "{preset}: cache vs full pass");
        }
    }
}
