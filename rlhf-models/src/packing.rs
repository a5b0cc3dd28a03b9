//! SFT's packing (TRL's `packing`, with its `packing_strategy`): examples put end to end into
//! rows of at most `row_len` tokens, so that a batch holds fewer pads.
//!
//! - [`PackingStrategy::Bfd`] (TRL's default): best-fit decreasing. The examples, longest first,
//!   each go whole into the row whose free space fits them most tightly (of rows with equal
//!   space, the one that came to it first), or into a new row when none has room; an example
//!   longer than a row keeps its first `row_len` tokens. Each example of a row keeps its own
//!   positions and attends only to itself ([`crate::TokenInput::packed`]), and its first token is
//!   never a target (nothing of its own precedes it), so an example's loss terms are the ones it
//!   has alone: what TRL's padding-free batches give.
//! - [`PackingStrategy::BfdSplit`]: the same, but an example longer than a row is split into
//!   pieces of `row_len` tokens (the last shorter), each packed as an example of its own, its
//!   own positions from 0 (TRL's `bfd_split`): no token is lost, but a piece after the first
//!   does not see the tokens before it.
//! - [`PackingStrategy::Wrapped`]: the examples' tokens as one stream, cut every `row_len`
//!   tokens. An example may span two rows, and attention crosses example boundaries, as in a
//!   constant-length dataset.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::sft::{Example, LmBatch};

/// How examples are packed into rows (TRL's `packing_strategy`; see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PackingStrategy {
    /// Best-fit decreasing: whole examples (a longer one cut to the row), each attending only
    /// to itself.
    #[default]
    Bfd,
    /// Best-fit decreasing of pieces: an example longer than a row split into pieces of a row's
    /// length (the last shorter), each placed, positioned and attended to as an example.
    BfdSplit,
    /// One stream cut into rows: examples split across rows, attention across examples.
    Wrapped,
}

/// A packed row: token ids, each token's example number in the row (from 1; every token 1 for
/// a wrapped row, whose examples attend to each other) and the target flags.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedRow {
    /// Token ids.
    pub ids: Vec<u32>,
    /// Each token's example in the row, from 1.
    pub sequences: Vec<u32>,
    /// 1 at the tokens the loss predicts.
    pub target: Vec<u8>,
}

/// Packs `examples` into rows of at most `row_len` tokens by `strategy`. Targets are the
/// response tokens.
pub fn pack(examples: &[&Example], row_len: usize, strategy: PackingStrategy) -> Vec<PackedRow> {
    match strategy {
        PackingStrategy::Bfd => pack_bfd(examples, row_len, false),
        PackingStrategy::BfdSplit => pack_bfd(examples, row_len, true),
        PackingStrategy::Wrapped => pack_wrapped(examples, row_len),
    }
}

/// The rows one epoch has: the examples, or with `packing = Some(row_len)` the rows [`pack`]
/// makes of them. What a learning-rate schedule counts its steps from.
pub fn rows_per_epoch(
    examples: &[Example],
    packing: Option<usize>,
    strategy: PackingStrategy,
) -> usize {
    match (packing, strategy) {
        (None, _) => examples.len(),
        (Some(row_len), PackingStrategy::Wrapped) => {
            let tokens: usize = examples.iter().map(|(p, r)| p.len() + r.len()).sum();
            tokens.div_ceil(row_len.max(2))
        }
        (Some(row_len), PackingStrategy::Bfd | PackingStrategy::BfdSplit) => {
            let row_len = row_len.max(2);
            let refs: Vec<&Example> = examples.iter().collect();
            let split = strategy == PackingStrategy::BfdSplit;
            let pieces = pieces(&refs, row_len, split);
            best_fit_decreasing(pieces.iter().map(|piece| piece.2), row_len).len()
        }
    }
}

/// The examples' tokens end to end (prompt, response, next prompt, …), cut into rows of exactly
/// `row_len` tokens, the last row shorter; an example longer than a row spans several.
fn pack_wrapped(examples: &[&Example], row_len: usize) -> Vec<PackedRow> {
    let row_len = row_len.max(2);
    let mut stream: Vec<(u32, u8)> = Vec::new();
    for (p, r) in examples {
        stream.extend(p.iter().map(|&t| (t, 0)));
        stream.extend(r.iter().map(|&t| (t, 1)));
    }
    stream
        .chunks(row_len)
        .map(|c| PackedRow {
            ids: c.iter().map(|x| x.0).collect(),
            sequences: vec![1; c.len()],
            target: c.iter().map(|x| x.1).collect(),
        })
        .collect()
}

/// Best-fit decreasing: each example (its first `row_len` tokens; with `split`, each piece of
/// `row_len` tokens) whole in one row, the rows in the order they were opened, each row's
/// examples in the order they were placed.
fn pack_bfd(examples: &[&Example], row_len: usize, split: bool) -> Vec<PackedRow> {
    let row_len = row_len.max(2);
    let pieces = pieces(examples, row_len, split);
    best_fit_decreasing(pieces.iter().map(|piece| piece.2), row_len)
        .into_iter()
        .map(|members| {
            let mut row = PackedRow {
                ids: Vec::new(),
                sequences: Vec::new(),
                target: Vec::new(),
            };
            for (number, &m) in (1..).zip(&members) {
                let (i, start, len) = pieces[m];
                let (prompt, response) = examples[i];
                let tokens = prompt
                    .iter()
                    .map(|&t| (t, 0))
                    .chain(response.iter().map(|&t| (t, 1)))
                    .skip(start)
                    .take(len);
                for (k, (id, target)) in tokens.enumerate() {
                    row.ids.push(id);
                    row.sequences.push(number);
                    // a piece's first token has nothing of its own before it to predict it from
                    row.target.push(if k == 0 { 0 } else { target });
                }
            }
            row
        })
        .collect()
}

/// The pieces best-fit decreasing places, as (example, first token, length): each example's
/// first `row_len` tokens, or with `split` all of its tokens in pieces of `row_len`, the last
/// shorter (TRL's `bfd_split`). Empty examples have none.
fn pieces(examples: &[&Example], row_len: usize, split: bool) -> Vec<(usize, usize, usize)> {
    let mut pieces = Vec::new();
    for (i, (prompt, response)) in examples.iter().enumerate() {
        let n = prompt.len() + response.len();
        let mut start = 0;
        while start < n && (split || start == 0) {
            let len = (n - start).min(row_len);
            pieces.push((i, start, len));
            start += len;
        }
    }
    pieces
}

/// The rows of best-fit decreasing over sequences of `lengths` (each cut to `row_len`; empty
/// ones left out), as the indices of the sequences in each row. The longest go first (ties in
/// their order); each goes into the row with the least free space that holds it (among rows with
/// equal space, the one that came to it first), or into a new row: TRL's `_pack_bfd`.
fn best_fit_decreasing(lengths: impl Iterator<Item = usize>, row_len: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<(usize, usize)> = lengths
        .enumerate()
        .filter(|&(_, n)| n > 0)
        .map(|(i, n)| (i, n.min(row_len)))
        .collect();
    order.sort_by_key(|&(_, n)| std::cmp::Reverse(n));
    let mut rows: Vec<Vec<usize>> = Vec::new();
    // free space → the rows with that much room, in the order they came to it
    let mut by_space: BTreeMap<usize, VecDeque<usize>> = BTreeMap::new();
    for (i, n) in order {
        let fit = by_space.range_mut(n..).next().map(|(&space, rows)| {
            let row = rows.pop_front().expect("no empty queue is kept");
            (space, row)
        });
        let (space, row) = match fit {
            Some((space, row)) => {
                if by_space[&space].is_empty() {
                    by_space.remove(&space);
                }
                (space, row)
            }
            None => {
                rows.push(Vec::new());
                (row_len, rows.len() - 1)
            }
        };
        rows[row].push(i);
        if space > n {
            by_space.entry(space - n).or_default().push_back(row);
        }
    }
    rows
}

/// A batch of packed rows, right-padded to the longest: the model reads each row's examples
/// apart ([`LmBatch::sequences`]) unless the rows are wrapped ones.
pub fn packed_batch(rows: &[PackedRow]) -> LmBatch {
    let seq = rows.iter().map(|r| r.ids.len()).max().unwrap_or(1);
    let apart = rows.iter().any(|r| r.sequences.iter().any(|&s| s > 1));
    let mut b = LmBatch {
        batch: rows.len(),
        seq,
        ids: Vec::new(),
        attention: Vec::new(),
        target: Vec::new(),
        sequences: Vec::new(),
    };
    for row in rows {
        let pad = seq - row.ids.len();
        b.ids
            .extend(row.ids.iter().copied().chain(std::iter::repeat_n(0, pad)));
        b.attention
            .extend(std::iter::repeat_n(1, row.ids.len()).chain(std::iter::repeat_n(0, pad)));
        b.target.extend(
            row.target
                .iter()
                .copied()
                .chain(std::iter::repeat_n(0, pad)),
        );
        if apart {
            b.sequences.extend(
                row.sequences
                    .iter()
                    .copied()
                    .chain(std::iter::repeat_n(0, pad)),
            );
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_packing_keeps_every_token_once_and_targets_only_responses() {
        let a: Example = (vec![1, 2], vec![3, 4, 9]);
        let b: Example = (vec![5], vec![6, 9]);
        let rows = pack(&[&a, &b], 3, PackingStrategy::Wrapped);
        let flat: Vec<u32> = rows.iter().flat_map(|r| r.ids.clone()).collect();
        assert_eq!(flat, vec![1, 2, 3, 4, 9, 5, 6, 9]);
        let targets: Vec<u8> = rows.iter().flat_map(|r| r.target.clone()).collect();
        assert_eq!(targets, vec![0, 0, 1, 1, 1, 0, 1, 1]);
        assert!(rows.iter().all(|r| r.ids.len() <= 3));
        let batch = packed_batch(&rows);
        assert_eq!((batch.batch, batch.seq), (3, 3));
        assert_eq!(&batch.attention[6..], &[1, 1, 0]);
        assert_eq!(&batch.target[6..], &[1, 1, 0]);
        assert!(
            batch.sequences.is_empty(),
            "wrapped rows attend across examples"
        );
    }

    /// The sequences of TRL's `pack_dataset` example, `[1, 2, 3, 4, 5]`, `[6, 7]`, `[8, 9, 10]`
    /// and `[11]`, as prompts and responses.
    fn trl_example() -> Vec<Example> {
        vec![
            (vec![1, 2], vec![3, 4, 5]),
            (vec![6], vec![7]),
            (vec![8], vec![9, 10]),
            (vec![], vec![11]),
        ]
    }

    /// TRL's own example of `pack_dataset(…, seq_length=4, strategy="bfd")`: sequences of 5, 2,
    /// 3 and 1 tokens make the rows `[1, 2, 3, 4]`, `[8, 9, 10, 11]` and `[6, 7]`.
    #[test]
    fn best_fit_decreasing_packs_as_trl_does() {
        let rows = best_fit_decreasing([5, 2, 3, 1].into_iter(), 4);
        assert_eq!(rows, vec![vec![0], vec![2, 3], vec![1]]);
        let examples = trl_example();
        let refs: Vec<&Example> = examples.iter().collect();
        let rows = pack(&refs, 4, PackingStrategy::Bfd);
        let ids: Vec<Vec<u32>> = rows.iter().map(|r| r.ids.clone()).collect();
        assert_eq!(ids, vec![vec![1, 2, 3, 4], vec![8, 9, 10, 11], vec![6, 7]]);
        assert_eq!(rows[1].sequences, vec![1, 1, 1, 2]);
        // responses are targets, except an example's first token (the last example's only one)
        assert_eq!(rows[0].target, vec![0, 0, 1, 1]);
        assert_eq!(rows[1].target, vec![0, 1, 1, 0]);
        let batch = packed_batch(&rows);
        assert_eq!(batch.sequences[4..8], [1, 1, 1, 2]);
        assert_eq!(batch.sequences[8..12], [1, 1, 0, 0]);
    }

    /// Best fit: a sequence goes into the row it fills most tightly, of rows with equal space the
    /// one that came to it first (TRL's queue per free space), not the first opened (first fit);
    /// none is split, and every one is placed once.
    #[test]
    fn best_fit_decreasing_takes_the_tightest_row() {
        // 6 and 5 open rows with 4 and 5 free; 4 fills the first, 3 goes to the second (5 free),
        // 2 then fits the second's 2 free
        let rows = best_fit_decreasing([6, 5, 4, 3, 2].into_iter(), 10);
        assert_eq!(rows, vec![vec![0, 2], vec![1, 3, 4]]);
        // 12 and 10 open rows with 8 and 10 free; 9 takes the second's 10 (first fit would try
        // the first, too small), leaving 1; 7 takes the first's 8, leaving 1 too; 1 goes to the
        // second, which came to 1 free first (first fit would take the first row)
        let rows = best_fit_decreasing([12, 10, 9, 7, 1].into_iter(), 20);
        assert_eq!(rows, vec![vec![0, 3], vec![1, 2, 4]]);
        let lengths: Vec<usize> = (0..200).map(|i| (i * 37 % 23) + (i % 3)).collect();
        let rows = best_fit_decreasing(lengths.iter().copied(), 24);
        let mut placed: Vec<usize> = rows.concat();
        placed.sort_unstable();
        let nonempty: Vec<usize> = (0..200).filter(|&i| lengths[i] > 0).collect();
        assert_eq!(placed, nonempty);
        assert!(
            rows.iter()
                .all(|r| r.iter().map(|&i| lengths[i]).sum::<usize>() <= 24)
        );
    }

    /// TRL's own example of `pack_dataset(…, seq_length=4, strategy="bfd_split")`: the sequence
    /// of 5 is split into 4 and 1, and the rows are `[1, 2, 3, 4]`, `[8, 9, 10, 5]` and
    /// `[6, 7, 11]`; a piece's first token is no target.
    #[test]
    fn best_fit_decreasing_of_pieces_packs_as_trl_does() {
        let examples = trl_example();
        let refs: Vec<&Example> = examples.iter().collect();
        let rows = pack(&refs, 4, PackingStrategy::BfdSplit);
        let ids: Vec<Vec<u32>> = rows.iter().map(|r| r.ids.clone()).collect();
        assert_eq!(
            ids,
            vec![vec![1, 2, 3, 4], vec![8, 9, 10, 5], vec![6, 7, 11]]
        );
        assert_eq!(rows[1].sequences, vec![1, 1, 1, 2]);
        assert_eq!(rows[1].target, vec![0, 1, 1, 0]);
        assert_eq!(rows[2].sequences, vec![1, 1, 2]);
    }

    /// A schedule counts packed rows, not examples: `rows_per_epoch` is the number of rows
    /// `pack` makes (and the example count without packing).
    #[test]
    fn rows_per_epoch_counts_the_packed_rows() {
        let examples: Vec<Example> = (0..23u32)
            .map(|i| (vec![1; (i % 5 + 1) as usize], vec![2; (i % 7 + 1) as usize]))
            .collect();
        let refs: Vec<&Example> = examples.iter().collect();
        let strategies = [
            PackingStrategy::Bfd,
            PackingStrategy::BfdSplit,
            PackingStrategy::Wrapped,
        ];
        for strategy in strategies {
            for row_len in [2, 3, 8, 16, 1000] {
                assert_eq!(
                    rows_per_epoch(&examples, Some(row_len), strategy),
                    pack(&refs, row_len, strategy).len(),
                    "{strategy:?}, row length {row_len}"
                );
            }
            assert_eq!(rows_per_epoch(&examples, None, strategy), 23);
        }
    }
}
