//! The key/value cache for incremental decoding.

use burn::tensor::{Int, Tensor};

/// Keys and values of one layer, `[batch, heads, past, head_dim]` each.
#[derive(Debug, Clone, Default)]
pub struct LayerCache {
    kv: Option<(Tensor<4>, Tensor<4>)>,
}

impl LayerCache {
    /// Appends the new positions' keys and values and returns all of them.
    pub fn append(&mut self, k: Tensor<4>, v: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let (k, v) = match self.kv.take() {
            Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
            None => (k, v),
        };
        self.kv = Some((k.clone(), v.clone()));
        (k, v)
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.kv.as_ref().map_or(0, |(k, _)| k.dims()[2])
    }

    /// Whether nothing is held yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One [`LayerCache`] per layer. Under LongRoPE (Phi-3) it also keeps the token ids it has seen
/// and which factors its keys were computed with, so that it can be rebuilt when the sequence
/// crosses the switch (see [`crate::CausalLm::hidden`]).
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    pub(crate) ids: Option<Tensor<2, Int>>,
    pub(crate) long_factors: Option<bool>,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// One slot per layer for `n` layers: the layer caches when there is a cache, `None`s
    /// otherwise.
    pub(crate) fn slots(cache: Option<&mut KvCache>, n: usize) -> Vec<Option<&mut LayerCache>> {
        match cache {
            Some(c) => {
                if c.layers.len() < n {
                    c.layers.resize_with(n, LayerCache::default);
                }
                c.layers.iter_mut().take(n).map(Some).collect()
            }
            None => (0..n).map(|_| None).collect(),
        }
    }

    /// Drops every key, value and id held.
    pub(crate) fn clear(&mut self) {
        *self = Self::default();
    }

    /// Positions held (0 when empty).
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, LayerCache::len)
    }

    /// Whether nothing is held yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
