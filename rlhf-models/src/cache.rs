//! The key/value cache for incremental decoding.
//!
//! Each layer's keys and values live in a buffer of `capacity` positions that is allocated once
//! and written in place: a decode step writes one position per row instead of copying every
//! position held into a longer tensor. Attention reads the whole buffer; the slots not written
//! yet are blocked by the attention mask ([`crate::attention::Context`]), so they add exact zeros
//! to the softmax and to the weighted sum. A forward pass that would overflow the buffer moves
//! what it holds to one twice as large (or as large as needed).

use burn::tensor::{Int, Tensor, TensorData, s};

/// Keys and values of one layer, `[batch, heads, capacity, head_dim]` each, of which the first
/// `len` positions are written.
#[derive(Debug, Clone, Default)]
pub struct LayerCache {
    kv: Option<(Tensor<4>, Tensor<4>)>,
    len: usize,
    /// Positions the buffers hold after the forward pass under way ([`KvCache::slots`]).
    capacity: usize,
}

impl LayerCache {
    /// Writes the new positions' keys and values after the ones held and returns both buffers,
    /// `[batch, heads, capacity, head_dim]`: positions from `len` on are not written yet and
    /// must be masked.
    pub fn append(&mut self, k: Tensor<4>, v: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let [b, h, new, hd] = k.dims();
        let end = self.len + new;
        let capacity = self.capacity.max(end);
        let (keys, values) = match self.kv.take() {
            Some(kv) if kv.0.dims()[2] == capacity => kv,
            held => {
                let (device, dtype) = (k.device(), k.dtype());
                let empty = || Tensor::<4>::zeros([b, h, capacity, hd], (&device, dtype));
                let (keys, values) = (empty(), empty());
                match held {
                    Some((pk, pv)) => {
                        let len = self.len;
                        (
                            keys.slice_assign(s![.., .., 0..len, ..], pk.narrow(2, 0, len)),
                            values.slice_assign(s![.., .., 0..len, ..], pv.narrow(2, 0, len)),
                        )
                    }
                    None => (keys, values),
                }
            }
        };
        // in place when the buffer is not shared (the tensors attention read last step are gone)
        let keys = keys.slice_assign(s![.., .., self.len..end, ..], k);
        let values = values.slice_assign(s![.., .., self.len..end, ..], v);
        self.len = end;
        self.kv = Some((keys.clone(), values.clone()));
        (keys, values)
    }

    /// Keeps the rows `rows` (indices into the batch, in that order).
    fn select_rows(&mut self, rows: &Tensor<1, Int>) {
        if let Some((k, v)) = self.kv.take() {
            self.kv = Some((k.select(0, rows.clone()), v.select(0, rows.clone())));
        }
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is held yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One [`LayerCache`] per layer. Under LongRoPE (Phi-3) it also keeps the token ids it has seen
/// and which factors its keys were computed with, so that it can be rebuilt when the sequence
/// crosses the switch (see [`crate::CausalLm::hidden`]).
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    /// Positions to allocate at the first forward pass (at least what it needs).
    reserve: usize,
    pub(crate) ids: Option<Tensor<2, Int>>,
    pub(crate) long_factors: Option<bool>,
}

impl KvCache {
    /// An empty cache; its buffers grow by doubling.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty cache whose buffers hold `positions` (prompt and new tokens) without ever
    /// being reallocated.
    pub fn with_capacity(positions: usize) -> Self {
        KvCache {
            reserve: positions,
            ..Self::default()
        }
    }

    /// For a forward pass of `new` positions through `n` layers: the number of key positions
    /// attention will read (the buffers' capacity after the pass), and one slot per layer — the
    /// layer caches when there is a cache, `None`s otherwise. Without a cache, attention reads
    /// the `new` positions only.
    pub(crate) fn slots(
        cache: Option<&mut KvCache>,
        n: usize,
        new: usize,
    ) -> (usize, Vec<Option<&mut LayerCache>>) {
        match cache {
            Some(c) => {
                if c.layers.len() < n {
                    c.layers.resize_with(n, LayerCache::default);
                }
                let held = c.layers[0].capacity;
                let needed = c.len() + new;
                let capacity = if needed <= held {
                    held
                } else if held == 0 {
                    needed.max(c.reserve)
                } else {
                    needed.max(2 * held)
                };
                let layers = c.layers.iter_mut().take(n);
                let slots = layers
                    .map(|l| {
                        l.capacity = capacity;
                        Some(l)
                    })
                    .collect();
                (capacity, slots)
            }
            None => (new, (0..n).map(|_| None).collect()),
        }
    }

    /// Keeps the batch rows `rows` (indices, in that order) and drops the others: decoding goes
    /// on for the rows that have not finished.
    pub fn select_rows(&mut self, rows: &[usize]) {
        let Some(device) = self
            .layers
            .iter()
            .find_map(|l| l.kv.as_ref().map(|(k, _)| k.device()))
        else {
            return;
        };
        let index: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        let index = Tensor::<1, Int>::from_data(TensorData::new(index, [rows.len()]), &device);
        for layer in &mut self.layers {
            layer.select_rows(&index);
        }
        if let Some(ids) = self.ids.take() {
            self.ids = Some(ids.select(0, index));
        }
    }

    /// Drops every key, value and id held (the buffers' size is remembered for the next pass).
    pub(crate) fn clear(&mut self) {
        let reserve = self
            .reserve
            .max(self.layers.first().map_or(0, |l| l.capacity));
        *self = Self {
            reserve,
            ..Self::default()
        };
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
