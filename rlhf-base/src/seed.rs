//! Seeds derived from names: a generator for "prompt 12 of the eval split", a stream for
//! "shuffle", a split for a record's prompt.
//!
//! The function is FNV-1a, 64 bits, and it is fixed for good: it decides the gold-oracle tasks'
//! prompts (`docs/tasks.md`), which split a user's record falls into, and the RNG streams a
//! resumed run replays. Changing it would change every task's data and every study point, so it
//! is not the artefact checksum ([`crate::fs::checksum`]), which may change with the checkpoint
//! format. Its inputs are short names, so its speed does not matter.

/// FNV-1a of `tag`: the same 64-bit seed for the same bytes, on every platform and version.
pub fn seed_of(tag: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in tag {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::seed_of;

    /// The published FNV-1a 64 test vectors: a change of the function would change every task.
    #[test]
    fn seeds_are_fnv1a_64() {
        assert_eq!(seed_of(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(seed_of(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(seed_of(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
