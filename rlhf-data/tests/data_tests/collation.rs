//! Collation properties: no token lost or duplicated, masks consistent with lengths, padding never
//! inside a sequence, positions counting real tokens.

use proptest::prelude::*;
use rlhf_data::{Truncation, collate, length_buckets, position_ids};

fn seqs() -> impl Strategy<Value = Vec<(Vec<u32>, Vec<u32>)>> {
    prop::collection::vec(
        (
            prop::collection::vec(0u32..50, 1..9),
            prop::collection::vec(0u32..50, 0..7),
        ),
        1..6,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn every_token_is_kept_in_order_and_masks_match(pairs in seqs(), max_p in 1usize..10, max_r in 0usize..8, truncate in any::<bool>()) {
        let pad = 999;
        let refs: Vec<(&[u32], &[u32])> = pairs.iter().map(|(p, r)| (p.as_slice(), r.as_slice())).collect();
        let t = truncate.then_some(Truncation { max_prompt: max_p, max_response: max_r });
        let b = collate(&refs, pad, t);
        let l = b.seq_len();
        prop_assert_eq!(b.input_ids.len(), b.batch * l);
        for (row, (p, r)) in pairs.iter().enumerate() {
            let (p, r) = match t {
                Some(t) => (&p[p.len().saturating_sub(t.max_prompt)..], &r[..r.len().min(t.max_response)]),
                None => (&p[..], &r[..]),
            };
            let ids = &b.input_ids[row * l..(row + 1) * l];
            let att = &b.attention_mask[row * l..(row + 1) * l];
            let resp = &b.response_mask[row * l..(row + 1) * l];
            // the prompt ends exactly at prompt_len; the response starts there
            prop_assert_eq!(&ids[b.prompt_len - p.len()..b.prompt_len], p);
            prop_assert_eq!(&ids[b.prompt_len..b.prompt_len + r.len()], r);
            // real tokens are one contiguous run: pads only before the prompt and after the response
            let real: Vec<usize> = (0..l).filter(|&i| att[i] == 1).collect();
            prop_assert_eq!(real.len(), p.len() + r.len());
            prop_assert!(real.windows(2).all(|w| w[1] == w[0] + 1), "padding inside a sequence");
            prop_assert!((0..l).filter(|&i| att[i] == 0).all(|i| ids[i] == pad));
            prop_assert_eq!(resp.iter().filter(|&&m| m == 1).count(), r.len());
            prop_assert!((0..l).all(|i| resp[i] == 0 || (att[i] == 1 && i >= b.prompt_len)));
            // positions count real tokens from 0
            let pos = &b.position_ids[row * l..(row + 1) * l];
            for (k, &i) in real.iter().enumerate() {
                prop_assert_eq!(pos[i] as usize, k);
            }
        }
        // the prompt part alone, as generation reads it
        let (pids, pmask) = b.prompts();
        prop_assert_eq!(pids.len(), b.batch * b.prompt_len);
        prop_assert_eq!(pmask.iter().filter(|&&m| m == 1).count(), pairs.iter().map(|(p, _)| t.map_or(p.len(), |t| p.len().min(t.max_prompt))).sum::<usize>());
    }

    #[test]
    fn length_buckets_cover_every_index_once(lengths in prop::collection::vec(0usize..100, 0..60), bs in 1usize..9, seed in any::<u64>()) {
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed);
        let batches = length_buckets(&lengths, bs, &mut rng);
        let mut all: Vec<usize> = batches.iter().flatten().copied().collect();
        all.sort_unstable();
        prop_assert_eq!(all, (0..lengths.len()).collect::<Vec<_>>());
        prop_assert!(batches.iter().all(|b| !b.is_empty() && b.len() <= bs));
        // within the sorted order, batches are contiguous: a batch's lengths span no other batch's
        let spans: Vec<(usize, usize)> = batches.iter().map(|b| (b.iter().map(|&i| lengths[i]).min().unwrap(), b.iter().map(|&i| lengths[i]).max().unwrap())).collect();
        for (i, a) in spans.iter().enumerate() {
            for c in &spans[i + 1..] {
                prop_assert!(a.1 <= c.0 || c.1 <= a.0, "{:?} overlaps {:?}", a, c);
            }
        }
    }
}

#[test]
fn positions_from_a_left_padded_mask() {
    assert_eq!(position_ids(&[0, 0, 1, 1, 1, 0]), vec![0, 0, 0, 1, 2, 0]);
}
