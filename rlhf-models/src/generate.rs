//! Batched sampling with a KV cache: temperature, top-k, top-p, min/max new tokens, stop at EOS
//! per sequence, seeded.
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
//!   (no sort).

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
/// token-id order. The logits are divided by the temperature (1 for greedy decoding), with
/// `suppress` (before `min_new_tokens`) EOS and the stop ids are removed, top-k then top-p keep
/// the most likely tokens (ties broken by the lower id), and what is kept is renormalised.
fn distribution(logits: &[f32], cfg: &SamplingConfig, suppress: bool) -> Vec<(u32, f32)> {
    let temperature = if cfg.temperature > 0.0 {
        cfg.temperature
    } else {
        1.0
    };
    let mut cand: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .filter(|(i, _)| !(suppress && cfg.ends(*i as u32)))
        .map(|(i, &l)| (i as u32, l / temperature))
        .collect();
    // as transformers: a top-k of 0 and a top-p of 1 or more keep every token
    let (top_k, top_p) = (cfg.top_k.filter(|&k| k > 0), cfg.top_p.filter(|&p| p < 1.0));
    if top_k.is_some() || top_p.is_some() {
        cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if let Some(k) = top_k {
            cand.truncate(k);
        }
        if let Some(p) = top_p {
            let z = log_sum_exp(&cand);
            let mut mass = 0.0;
            let keep = cand
                .iter()
                .position(|x| {
                    mass += (x.1 - z).exp();
                    mass >= p
                })
                .map_or(cand.len(), |i| i + 1);
            cand.truncate(keep.max(1));
        }
        cand.sort_unstable_by_key(|c| c.0);
    }
    let z = log_sum_exp(&cand);
    cand.into_iter().map(|(t, l)| (t, l - z)).collect()
}

/// `log Σ exp(l)` over the candidates' logits, stable for any range.
fn log_sum_exp(cand: &[(u32, f32)]) -> f32 {
    let m = cand.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
    m + cand.iter().map(|c| (c.1 - m).exp()).sum::<f32>().ln()
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
            let dist = distribution(&last[i * vocab..(i + 1) * vocab], cfg, suppress);
            let (tok, lp) = sample(&dist, greedy, &mut rngs[r]);
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
/// Fails only when a real prompt token lies outside the model's vocabulary.
pub fn generate(
    model: &CausalLm,
    prompt_ids: &[u32],
    prompt_mask: &[u8],
    batch: usize,
    cfg: &SamplingConfig,
    rng: &mut impl Rng,
) -> Result<Generation> {
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
        let all = distribution(&logits, &unfiltered(1.0), false);
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
        );
        // p(4) ≈ 0.62 < 0.7; adding token 0 (≈ 0.23) passes it
        assert_eq!(ids(&p), vec![0, 4], "{p:?}");
        let ends = SamplingConfig {
            eos_id: Some(4),
            stop_ids: vec![1],
            ..unfiltered(1.0)
        };
        let no_eos = distribution(&logits, &ends, true);
        assert_eq!(
            ids(&no_eos),
            vec![0, 2, 3],
            "EOS and the stop ids suppressed"
        );
        assert_eq!(ids(&distribution(&logits, &ends, false)).len(), 5);
        // a lower temperature sharpens the distribution
        let cold = distribution(&logits, &unfiltered(0.5), false);
        assert!(most_likely(&cold).1 > most_likely(&all).1);
    }

    /// The walk in id order draws each token with its probability: over many draws the
    /// frequencies match the distribution.
    #[test]
    fn sampling_draws_each_token_with_its_probability() {
        let logits = [0.3f32, -2.0, 1.5, 0.0, 1.0, -0.5];
        let dist = distribution(&logits, &unfiltered(0.7), false);
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
