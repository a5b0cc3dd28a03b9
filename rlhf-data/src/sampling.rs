//! Sub-sampling for the scaling axes, and splits that never leak a prompt.

use std::collections::BTreeMap;

use rand::Rng;
use rand::seq::SliceRandom;
use rlhf_base::seed::seed_of;
use serde::{Deserialize, Serialize};

/// The first `n` items of one seeded permutation: volumes drawn with the same seed are nested
/// (the 1k-pair set is inside the 2k-pair set), so a volume sweep changes only the volume.
pub fn subsample_volume<T: Clone>(items: &[T], n: usize, rng: &mut impl Rng) -> Vec<T> {
    let mut idx: Vec<usize> = (0..items.len()).collect();
    idx.shuffle(rng);
    idx.into_iter().take(n).map(|i| items[i].clone()).collect()
}

/// A fixed budget of items spread over prompts: `budget / per_prompt` prompts with `per_prompt`
/// items each (the seed paper's diversity axis: many prompts × 1 pair vs few prompts × many pairs).
///
/// `items` are grouped by `key` (the prompt); only prompts with at least `per_prompt` items take
/// part. Returns fewer than `budget` items when there are not enough such prompts.
pub fn subsample_diversity<T: Clone>(
    items: &[T],
    key: impl Fn(&T) -> String,
    budget: usize,
    per_prompt: usize,
    rng: &mut impl Rng,
) -> Vec<T> {
    let per_prompt = per_prompt.max(1);
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, it) in items.iter().enumerate() {
        groups.entry(key(it)).or_default().push(i);
    }
    let mut eligible: Vec<Vec<usize>> = groups
        .into_values()
        .filter(|g| g.len() >= per_prompt)
        .collect();
    eligible.shuffle(rng);
    let mut out = Vec::with_capacity(budget);
    for mut g in eligible.into_iter().take(budget / per_prompt) {
        g.shuffle(rng);
        out.extend(g.into_iter().take(per_prompt).map(|i| items[i].clone()));
    }
    out
}

/// Which split a record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Training.
    Train,
    /// Evaluation during training.
    Eval,
    /// Held-out test.
    Test,
}

/// The split of a record by a hash of its prompt (and a salt): deterministic, independent of file
/// order, and every record with the same prompt lands in the same split, so no prompt leaks from
/// train into eval or test. `eval` and `test` are shares in `[0, 1]`.
pub fn hash_split(prompt: &str, salt: &str, eval: f64, test: f64) -> Split {
    let mut bytes = salt.as_bytes().to_vec();
    bytes.push(0);
    bytes.extend_from_slice(prompt.as_bytes());
    // The name's seed, then SplitMix64's finaliser so every output bit depends on every input byte.
    let mut h = seed_of(&bytes);
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    let u = (h >> 11) as f64 / (1u64 << 53) as f64;
    if u < test {
        Split::Test
    } else if u < test + eval {
        Split::Eval
    } else {
        Split::Train
    }
}
