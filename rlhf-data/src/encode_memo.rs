//! A bounded memo of a tokenizer's recent encodings, shared by its clones. A pipeline encodes the
//! same prompts again and again (to sample, to score, to estimate the KL), and byte-level BPE
//! behind its pre-tokenising regular expression costs far more than a lookup.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rlhf_base::Result;

/// Bytes of text and ids the memo holds at most; it starts afresh when a new entry would pass it
/// (an entry larger than the whole memo is not kept).
const CAPACITY_BYTES: usize = 32 << 20;

/// Text → ids, for texts encoded since the memo last filled.
#[derive(Clone)]
pub(crate) struct EncodeMemo {
    inner: Arc<Mutex<Entries>>,
}

struct Entries {
    ids: HashMap<String, Vec<u32>>,
    bytes: usize,
    capacity: usize,
}

impl Default for EncodeMemo {
    fn default() -> Self {
        EncodeMemo::with_capacity(CAPACITY_BYTES)
    }
}

impl EncodeMemo {
    fn with_capacity(capacity: usize) -> Self {
        EncodeMemo {
            inner: Arc::new(Mutex::new(Entries {
                ids: HashMap::new(),
                bytes: 0,
                capacity,
            })),
        }
    }

    /// The ids of `text`: remembered, or from `encode` (outside the lock) and then remembered.
    pub(crate) fn ids(
        &self,
        text: &str,
        encode: impl FnOnce(&str) -> Result<Vec<u32>>,
    ) -> Result<Vec<u32>> {
        if let Some(ids) = self.lock().ids.get(text) {
            return Ok(ids.clone());
        }
        let ids = encode(text)?;
        let size = text.len() + 4 * ids.len();
        let mut entries = self.lock();
        if size > entries.capacity {
            return Ok(ids);
        }
        if entries.bytes + size > entries.capacity {
            entries.ids.clear();
            entries.bytes = 0;
        }
        if entries.ids.insert(text.to_owned(), ids.clone()).is_none() {
            entries.bytes += size;
        }
        Ok(ids)
    }

    /// Texts remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().ids.len()
    }

    // a panic elsewhere while the lock was held leaves whole entries behind, so poison is moot
    fn lock(&self) -> MutexGuard<'_, Entries> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn counting(calls: &Cell<usize>) -> impl Fn(&str) -> Result<Vec<u32>> + '_ {
        move |t| {
            calls.set(calls.get() + 1);
            Ok(t.bytes().map(u32::from).collect())
        }
    }

    #[test]
    fn a_text_is_encoded_once_and_clones_share_what_was_encoded() {
        let memo = EncodeMemo::default();
        let calls = Cell::new(0);
        let first = memo.ids("alice owns red car", counting(&calls)).unwrap();
        let again = memo
            .clone()
            .ids("alice owns red car", counting(&calls))
            .unwrap();
        assert_eq!(first, again);
        assert_eq!(calls.get(), 1);
        memo.ids("bob", counting(&calls)).unwrap();
        assert_eq!(calls.get(), 2);
    }

    #[test]
    fn a_full_memo_starts_afresh_and_an_error_is_not_remembered() {
        // "abcd" takes 4 bytes of text and 16 of ids: two fit in 40 bytes, a third does not
        let memo = EncodeMemo::with_capacity(40);
        let calls = Cell::new(0);
        for t in ["abcd", "efgh"] {
            memo.ids(t, counting(&calls)).unwrap();
        }
        assert_eq!(memo.len(), 2);
        memo.ids("ijkl", counting(&calls)).unwrap();
        assert_eq!(memo.len(), 1);
        assert_eq!(memo.ids("ijkl", counting(&calls)).unwrap().len(), 4);
        assert_eq!(calls.get(), 3);
        // larger than the whole memo: encoded, not kept, and the memo keeps what it has
        memo.ids(&"x".repeat(41), counting(&calls)).unwrap();
        assert_eq!(memo.len(), 1);
        let failing = |_: &str| Err(rlhf_base::Error::Config("no".into()));
        assert!(memo.ids("mnop", failing).is_err());
        assert_eq!(memo.len(), 1);
    }
}
