//! Batched sampling with a KV cache: temperature, top-k, top-p, min/max new tokens, stop at EOS
//! per sequence, seeded.
//!
//! The next-token distribution of each row is read to the host once per step (`[batch, vocab]`)
//! and sampled there with the caller's RNG, so a run is reproducible from its seed on any backend.

use rand::Rng;
use rlhf_core::Result;
use serde::{Deserialize, Serialize};

use rlhf_data::{Tokenizer, collate};

use crate::cache::KvCache;
use crate::lm::CausalLm;

/// How to sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingConfig {
    /// Tokens to generate at most.
    pub max_new_tokens: usize,
    /// EOS is suppressed until this many tokens have been generated.
    pub min_new_tokens: usize,
    /// Softmax temperature; 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep only the `k` most likely tokens.
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability reaches `p`.
    pub top_p: Option<f32>,
    /// The end-of-sequence token; a row stops after emitting it.
    pub eos_id: Option<u32>,
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
            use_cache: true,
        }
    }
}

/// Generated continuations, row-major `[batch, new]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Rows.
    pub batch: usize,
    /// Columns (the longest continuation).
    pub new_len: usize,
    /// Token ids; after a row's EOS, further ids are the EOS id (or 0) and masked.
    pub tokens: Vec<u32>,
    /// Log-probability of each token under the distribution it was sampled from (tempered and
    /// filtered; for greedy decoding, the untempered softmax). 0 where masked.
    pub logprobs: Vec<f32>,
    /// 1 up to and including a row's EOS, 0 after it.
    pub mask: Vec<u8>,
    /// Whether each row emitted EOS.
    pub has_eos: Vec<bool>,
}

/// The sampling distribution of one row: `(token, log-prob)` pairs that survive the filters.
fn distribution(logits: &[f32], cfg: &SamplingConfig, suppress: Option<u32>) -> Vec<(u32, f32)> {
    let temperature = if cfg.temperature > 0.0 {
        cfg.temperature
    } else {
        1.0
    };
    let mut cand: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i as u32) != suppress)
        .map(|(i, &l)| (i as u32, l / temperature))
        .collect();
    cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if let Some(k) = cfg.top_k {
        cand.truncate(k.max(1));
    }
    let log_norm = |c: &[(u32, f32)]| {
        let m = c[0].1;
        m + c.iter().map(|x| (x.1 - m).exp()).sum::<f32>().ln()
    };
    if let Some(p) = cfg.top_p {
        let z = log_norm(&cand);
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
    let z = log_norm(&cand);
    cand.into_iter().map(|(t, l)| (t, l - z)).collect()
}

fn sample(dist: &[(u32, f32)], greedy: bool, rng: &mut impl Rng) -> (u32, f32) {
    if greedy {
        return dist[0];
    }
    let u: f32 = rng.random();
    let mut acc = 0.0;
    for &(t, lp) in dist {
        acc += lp.exp();
        if u < acc {
            return (t, lp);
        }
    }
    *dist.last().expect("a distribution has at least one token")
}

/// Samples continuations of left-padded prompts.
///
/// - `prompt_ids`, `prompt_mask`: `[batch, prompt_len]`, left-padded (pads may hold any id, even
///   one outside the vocabulary: the model reads them through [`crate::TokenInput`]);
/// - `rng`: the run's generator (sampling draws one `f32` per row and step).
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
    let prompt_len = prompt_ids.len() / batch.max(1);
    let mut ids: Vec<u32> = prompt_ids.to_vec(); // [batch, prompt_len + step], row-major
    let mut mask: Vec<u8> = prompt_mask.to_vec();
    let mut cols = prompt_len;
    let mut cache = KvCache::new();
    let (mut tokens, mut logprobs, mut out_mask) = (
        vec![Vec::new(); batch],
        vec![Vec::new(); batch],
        vec![Vec::new(); batch],
    );
    let mut done = vec![false; batch];
    let greedy = cfg.temperature <= 0.0;
    for step in 0..cfg.max_new_tokens {
        let logits = if cfg.use_cache && step > 0 {
            // only the newest token of each row; the cache holds the rest
            let newest: Vec<u32> = (0..batch).map(|b| ids[b * cols + cols - 1]).collect();
            model.forward(&model.input(&newest, &mask, batch)?, Some(&mut cache))
        } else if cfg.use_cache {
            model.forward(&model.input(&ids, &mask, batch)?, Some(&mut cache))
        } else {
            model.forward(&model.input(&ids, &mask, batch)?, None)
        };
        let [_, t, vocab] = logits.dims();
        let last = rlhf_core::host::to_f32_vec(logits.narrow(1, t - 1, 1)); // [batch, vocab]
        let mut next = Vec::with_capacity(batch);
        for b in 0..batch {
            if done[b] {
                let filler = cfg.eos_id.unwrap_or(0);
                tokens[b].push(filler);
                logprobs[b].push(0.0);
                out_mask[b].push(0);
                next.push(filler);
                continue;
            }
            let suppress = if step < cfg.min_new_tokens {
                cfg.eos_id
            } else {
                None
            };
            let dist = distribution(&last[b * vocab..(b + 1) * vocab], cfg, suppress);
            let (tok, lp) = sample(&dist, greedy, rng);
            tokens[b].push(tok);
            logprobs[b].push(lp);
            out_mask[b].push(1);
            next.push(tok);
            if Some(tok) == cfg.eos_id {
                done[b] = true;
            }
        }
        let mut grown_ids = Vec::with_capacity(batch * (cols + 1));
        let mut grown_mask = Vec::with_capacity(batch * (cols + 1));
        for b in 0..batch {
            grown_ids.extend_from_slice(&ids[b * cols..(b + 1) * cols]);
            grown_ids.push(next[b]);
            grown_mask.extend_from_slice(&mask[b * cols..(b + 1) * cols]);
            grown_mask.push(1);
        }
        ids = grown_ids;
        mask = grown_mask;
        cols += 1;
        if done.iter().all(|&d| d) {
            break;
        }
    }
    let new_len = tokens.first().map_or(0, Vec::len);
    Ok(Generation {
        batch,
        new_len,
        tokens: tokens.concat(),
        logprobs: logprobs.concat(),
        mask: out_mask.concat(),
        has_eos: (0..batch).map(|b| done[b]).collect(),
    })
}

/// Samples one continuation of each prompt text: tokenize, left-pad, [`generate`] with the
/// tokenizer's EOS, and decode what each row kept (ending with the EOS token's text when the row
/// stopped there). Returns the token ids and the texts, one per prompt.
pub fn sample_texts(
    model: &CausalLm,
    tokenizer: &Tokenizer,
    prompts: &[&str],
    cfg: &SamplingConfig,
    rng: &mut impl Rng,
) -> Result<(Vec<Vec<u32>>, Vec<String>)> {
    let ids = prompts
        .iter()
        .map(|p| tokenizer.encode(p))
        .collect::<Result<Vec<_>>>()?;
    let pairs: Vec<(&[u32], &[u32])> = ids.iter().map(|p| (p.as_slice(), &[][..])).collect();
    let (pids, pmask) = collate(&pairs, tokenizer.pad_id(), None).prompts();
    let cfg = SamplingConfig {
        eos_id: Some(tokenizer.eos_id()),
        ..cfg.clone()
    };
    let g = generate(model, &pids, &pmask, prompts.len(), &cfg, rng)?;
    let tokens: Vec<Vec<u32>> = (0..prompts.len())
        .map(|b| {
            (b * g.new_len..(b + 1) * g.new_len)
                .filter(|&i| g.mask[i] == 1)
                .map(|i| g.tokens[i])
                .collect()
        })
        .collect();
    let texts = tokens
        .iter()
        .map(|t| tokenizer.decode(t))
        .collect::<Result<Vec<_>>>()?;
    Ok((tokens, texts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_keep_what_they_promise_and_renormalise() {
        let logits = [2.0f32, 1.0, 0.5, -1.0, 3.0];
        let all = distribution(
            &logits,
            &SamplingConfig {
                temperature: 1.0,
                ..Default::default()
            },
            None,
        );
        assert_eq!(all[0].0, 4);
        assert!((all.iter().map(|x| x.1.exp()).sum::<f32>() - 1.0).abs() < 1e-5);
        let k2 = distribution(
            &logits,
            &SamplingConfig {
                temperature: 1.0,
                top_k: Some(2),
                ..Default::default()
            },
            None,
        );
        assert_eq!(k2.iter().map(|x| x.0).collect::<Vec<_>>(), vec![4, 0]);
        assert!((k2.iter().map(|x| x.1.exp()).sum::<f32>() - 1.0).abs() < 1e-5);
        let p = distribution(
            &logits,
            &SamplingConfig {
                temperature: 1.0,
                top_p: Some(0.7),
                ..Default::default()
            },
            None,
        );
        assert_eq!(p.len(), 2, "{p:?}"); // p(4) ≈ 0.62 < 0.7; adding token 0 (≈ 0.23) passes it
        let no_eos = distribution(
            &logits,
            &SamplingConfig {
                temperature: 1.0,
                ..Default::default()
            },
            Some(4),
        );
        assert!(no_eos.iter().all(|x| x.0 != 4));
        // a lower temperature sharpens the distribution
        let cold = distribution(
            &logits,
            &SamplingConfig {
                temperature: 0.5,
                ..Default::default()
            },
            None,
        );
        assert!(cold[0].1 > all[0].1);
    }
}
