//! The samples an iteration shows (TRL's `log_completions`): for the first rows of the
//! experience, the prompt as the policy read it, the completion, the score and the advantage,
//! one JSON object each, which [`rlhf_core::train::Run::log_completions`] writes to
//! `completions.jsonl`.

use rlhf_core::Result;
use rlhf_data::Tokenizer;
use serde_json::{Map, Value};

use crate::trainer::Experience;

/// The first `n` rows of `exp` as `{prompt, completion, score, advantage}`:
/// - `prompt`: the query's real tokens (left padding dropped, cut to `query_length` as the policy
///   read it), decoded with their special tokens;
/// - `completion`: the response's tokens up to and including its end, decoded as the scorer
///   read it ([`Tokenizer::decode_response`]);
/// - `score`: the score the advantages were computed from: after the overlong punishment, the
///   reward clip and the missing-EOS penalty, and with `score_baseline` or `length_bucket_width` the reduced score
///   (with GDPO's normalisation, the weighted sum, whose functions' scores were normalised apart;
///   TRL logs each reward function's own value);
/// - `advantage`: the mean advantage over the response's tokens in the loss (a group estimator
///   gives each token the response's one advantage); a response left out of the loss
///   (`mask_truncated_completions`) has none (`null`).
pub fn completion_rows(
    exp: &Experience,
    tokenizer: &Tokenizer,
    n: usize,
) -> Result<Vec<Map<String, Value>>> {
    let (q, r) = (exp.query_len, exp.response_len);
    (0..exp.batch.min(n))
        .map(|row| {
            let ids = &exp.ids[row * (q + r)..(row + 1) * (q + r)];
            let attention = &exp.attention[row * (q + r)..(row + 1) * (q + r)];
            let real = |from: usize, to: usize| -> Vec<u32> {
                (from..to)
                    .filter(|&k| attention[k] == 1)
                    .map(|k| ids[k])
                    .collect()
            };
            let (query, response) = (real(0, q), real(q, q + r));
            let mask = &exp.mask[row * r..(row + 1) * r];
            let advantages = &exp.advantages[row * r..(row + 1) * r];
            let (sum, count) = advantages
                .iter()
                .zip(mask)
                .filter(|&(_, &m)| m > 0.5)
                .fold((0.0f64, 0usize), |(s, c), (&a, _)| {
                    (s + f64::from(a), c + 1)
                });
            let number =
                |x: f64| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number);
            let mut obj = Map::new();
            obj.insert("prompt".into(), tokenizer.decode(&query)?.into());
            obj.insert(
                "completion".into(),
                tokenizer.decode_response(&response)?.into(),
            );
            obj.insert("score".into(), number(f64::from(exp.scores[row])));
            let advantage = if count == 0 {
                f64::NAN
            } else {
                sum / count as f64
            };
            obj.insert("advantage".into(), number(advantage));
            Ok(obj)
        })
        .collect()
}
