//! Sub-sampling and splits.

use std::collections::BTreeMap;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rlhf_data::{Split, hash_split, subsample_diversity, subsample_volume};

#[test]
fn volumes_are_nested_and_sized() {
    let items: Vec<u32> = (0..1000).collect();
    let small = subsample_volume(&items, 100, &mut ChaCha8Rng::seed_from_u64(5));
    let large = subsample_volume(&items, 400, &mut ChaCha8Rng::seed_from_u64(5));
    assert_eq!((small.len(), large.len()), (100, 400));
    assert!(
        small.iter().all(|x| large.contains(x)),
        "the smaller volume is inside the larger"
    );
    assert_eq!(
        subsample_volume(&items, 5000, &mut ChaCha8Rng::seed_from_u64(5)).len(),
        1000
    );
}

#[test]
fn diversity_spreads_a_fixed_budget_over_prompts() {
    // 50 prompts × 8 pairs each
    let items: Vec<(u32, u32)> = (0..50).flat_map(|p| (0..8).map(move |k| (p, k))).collect();
    for per_prompt in [1, 2, 4, 8] {
        let s = subsample_diversity(
            &items,
            |x| x.0.to_string(),
            40,
            per_prompt,
            &mut ChaCha8Rng::seed_from_u64(1),
        );
        let mut by_prompt: BTreeMap<u32, usize> = BTreeMap::new();
        for (p, _) in &s {
            *by_prompt.entry(*p).or_default() += 1;
        }
        assert_eq!(s.len(), 40);
        assert_eq!(by_prompt.len(), 40 / per_prompt);
        assert!(by_prompt.values().all(|&c| c == per_prompt));
    }
}

#[test]
fn hash_splits_are_deterministic_proportional_and_never_leak_a_prompt() {
    let mut counts: BTreeMap<Split, usize> = BTreeMap::new();
    for i in 0..20_000 {
        let p = format!("prompt number {i}");
        let s = hash_split(&p, "salt", 0.1, 0.1);
        assert_eq!(s, hash_split(&p, "salt", 0.1, 0.1));
        *counts.entry(s).or_default() += 1;
    }
    let share = |s| counts[&s] as f64 / 20_000.0;
    assert!(
        (share(Split::Test) - 0.1).abs() < 0.01 && (share(Split::Eval) - 0.1).abs() < 0.01,
        "{counts:?}"
    );
    // the same prompt (e.g. in several preference pairs) always lands in one split
    let p = "shared prompt";
    assert!((0..10).all(|_| hash_split(p, "salt", 0.3, 0.3) == hash_split(p, "salt", 0.3, 0.3)));
}
