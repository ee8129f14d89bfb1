//! The key/value cache of one sequence, allocated once and written in place.
//!
//! Each layer keeps keys and values in a preallocated `[kv_heads, capacity, head_dim]` buffer;
//! a decode step writes its new row with `slice_set` and attention reads the `[.., len, ..]`
//! prefix as a view, so a step costs nothing proportional to the tokens already cached (only
//! attention itself reads them). Concatenating per step, as many candle models do, copies the
//! whole cache every token: quadratic in the generation length. When a sequence outgrows the
//! buffer the capacity doubles (one copy, amortised O(1) per token); callers that know the
//! prompt and `max_new_tokens` size it once and it never grows.
//!
//! The cache belongs to the caller (one per sequence); models receive it as `&mut`.
//!
//! An encoder-decoder's sequence also reads its input's encoder output in every decoder
//! layer's cross-attention: [`CrossKv`] holds those keys and values, computed once per input
//! (the encoder output does not change while decoding) and shared by the input's beams; a
//! [`Seq2SeqCache`] pairs it with the sequence's own self-attention cache.

use crate::error::Result;
use candle_core::{DType, Device, Tensor};
use std::sync::Arc;

#[derive(Debug, Clone)]
struct LayerKv {
    k: Tensor, // [kv_heads, capacity, head_dim]
    v: Tensor, // [kv_heads, capacity, head_dim]
    len: usize,
}

/// Keys and values of every layer for one sequence.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<LayerKv>,
    kv_heads: usize,
    head_dim: usize,
    capacity: usize,
}

impl KvCache {
    /// Allocates `num_layers` buffers of `capacity` positions.
    pub fn new(
        num_layers: usize,
        kv_heads: usize,
        head_dim: usize,
        capacity: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let capacity = capacity.max(1);
        let layers = (0..num_layers)
            .map(|_| {
                Ok(LayerKv {
                    k: Tensor::zeros((kv_heads, capacity, head_dim), dtype, device)?,
                    v: Tensor::zeros((kv_heads, capacity, head_dim), dtype, device)?,
                    len: 0,
                })
            })
            .collect::<Result<_>>()?;
        Ok(KvCache {
            layers,
            kv_heads,
            head_dim,
            capacity,
        })
    }

    /// Positions cached (those of the last layer written, equal for all after a forward pass).
    pub fn len(&self) -> usize {
        self.layers.last().map_or(0, |l| l.len)
    }

    /// True before the prompt is processed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Positions the buffers hold before they must grow.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Appends `k`, `v` `[t, kv_heads, head_dim]` to `layer` and returns the layer's keys and
    /// values so far, `[kv_heads, len, head_dim]` views into the buffers.
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        self.write(layer, k, v)?;
        self.view(layer)
    }

    /// Appends `k`, `v` `[t, kv_heads, head_dim]` to `layer`: f32 rows on the CPU are copied
    /// straight into the buffers (a decode step of a 16-sequence batch appended through
    /// tensor operations cost ~10 of them per sequence and layer), others through
    /// `slice_set`.
    pub fn write(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<()> {
        let t = k.dim(0)?;
        let (kv_heads, head_dim) = (self.kv_heads, self.head_dim);
        let needed = self.layers[layer].len + t;
        if needed > self.capacity {
            self.grow(needed.max(2 * self.capacity))?;
        }
        let capacity = self.capacity;
        let entry = &mut self.layers[layer];
        for (buffer, rows) in [(&entry.k, k), (&entry.v, v)] {
            let rows = rows.reshape((t, kv_heads, head_dim))?;
            if !super::cpu::kv_cache::write_rows(buffer, &rows, entry.len, capacity)? {
                buffer.slice_set(&rows.transpose(0, 1)?.contiguous()?, 1, entry.len)?;
            }
        }
        entry.len += t;
        Ok(())
    }

    /// The keys and values of `layer` so far, `[kv_heads, len, head_dim]` views.
    pub fn view(&self, layer: usize) -> Result<(Tensor, Tensor)> {
        let entry = &self.layers[layer];
        Ok((
            entry.k.narrow(1, 0, entry.len)?,
            entry.v.narrow(1, 0, entry.len)?,
        ))
    }

    /// Positions of `layer` written so far.
    pub fn layer_len(&self, layer: usize) -> usize {
        self.layers[layer].len
    }

    /// The buffers of `layer`, `[kv_heads, capacity, head_dim]` (positions past
    /// [`layer_len`](Self::layer_len) unwritten): for attention that reads each sequence's
    /// positions through its own bounds, without a view per step.
    pub(crate) fn buffers(&self, layer: usize) -> (Tensor, Tensor) {
        let entry = &self.layers[layer];
        (entry.k.clone(), entry.v.clone())
    }

    /// A new cache of exactly `positions` positions holding this one's first `positions`
    /// (a prompt kept for others that begin the same way).
    pub fn prefix(&self, positions: usize) -> Result<KvCache> {
        let mut copy = KvCache {
            layers: Vec::with_capacity(self.layers.len()),
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            capacity: positions.max(1),
        };
        for entry in &self.layers {
            let positions = positions.min(entry.len);
            copy.layers.push(LayerKv {
                k: entry.k.narrow(1, 0, positions)?.contiguous()?,
                v: entry.v.narrow(1, 0, positions)?.contiguous()?,
                len: positions,
            });
        }
        Ok(copy)
    }

    /// Starts this (empty) cache with the first `positions` of `other`, whose layers and
    /// heads match: the keys and values of a prompt's shared beginning, computed once.
    pub fn start_from(&mut self, other: &KvCache, positions: usize) -> Result<()> {
        if self.layers.len() != other.layers.len()
            || (self.kv_heads, self.head_dim) != (other.kv_heads, other.head_dim)
            || other.layers.iter().any(|l| l.len < positions)
        {
            return Err(candle_core::Error::Msg(format!(
                "cannot start a cache from {positions} positions of a different or shorter one"
            ))
            .into());
        }
        if positions > self.capacity {
            self.grow(positions)?;
        }
        for (entry, from) in self.layers.iter_mut().zip(&other.layers) {
            entry
                .k
                .slice_set(&from.k.narrow(1, 0, positions)?.contiguous()?, 1, 0)?;
            entry
                .v
                .slice_set(&from.v.narrow(1, 0, positions)?.contiguous()?, 1, 0)?;
            entry.len = positions;
        }
        Ok(())
    }

    /// A copy of this cache with buffers of its own, for a beam that continues another:
    /// both then append their own tokens in place.
    pub fn fork(&self) -> Result<KvCache> {
        let layers = self
            .layers
            .iter()
            .map(|entry| {
                Ok(LayerKv {
                    k: entry.k.copy()?,
                    v: entry.v.copy()?,
                    len: entry.len,
                })
            })
            .collect::<Result<_>>()?;
        Ok(KvCache {
            layers,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            capacity: self.capacity,
        })
    }

    /// Reallocates every layer with `capacity` positions, keeping what is cached.
    fn grow(&mut self, capacity: usize) -> Result<()> {
        for entry in &mut self.layers {
            let (dtype, device) = (entry.k.dtype(), entry.k.device().clone());
            let shape = (self.kv_heads, capacity, self.head_dim);
            let k = Tensor::zeros(shape, dtype, &device)?;
            let v = Tensor::zeros(shape, dtype, &device)?;
            if entry.len > 0 {
                k.slice_set(&entry.k.narrow(1, 0, entry.len)?.contiguous()?, 1, 0)?;
                v.slice_set(&entry.v.narrow(1, 0, entry.len)?.contiguous()?, 1, 0)?;
            }
            entry.k = k;
            entry.v = v;
        }
        self.capacity = capacity;
        Ok(())
    }
}

/// The keys and values of one input's encoder output for every decoder layer's
/// cross-attention, each `[heads, source_len, head_dim]` (contiguous): computed once when
/// the input is encoded, read by every decoding step of every beam of that input.
#[derive(Debug, Clone)]
pub struct CrossKv {
    layers: Vec<(Tensor, Tensor)>,
    source_len: usize,
}

impl CrossKv {
    /// The keys and values of each decoder layer, `[heads, source_len, head_dim]` each.
    pub fn new(layers: Vec<(Tensor, Tensor)>) -> Result<Self> {
        let source_len = match layers.first() {
            Some((k, _)) => k.dim(1)?,
            None => 0,
        };
        let layers = layers
            .into_iter()
            .map(|(k, v)| Ok((k.contiguous()?, v.contiguous()?)))
            .collect::<Result<_>>()?;
        Ok(CrossKv { layers, source_len })
    }

    /// Layer `layer`'s keys and values.
    pub fn layer(&self, layer: usize) -> &(Tensor, Tensor) {
        &self.layers[layer]
    }

    /// Positions of the encoder output (source tokens, or audio frames after the
    /// convolutions).
    pub fn source_len(&self) -> usize {
        self.source_len
    }
}

/// What an encoder-decoder's decoder keeps for one sequence (one beam): its own
/// self-attention cache and the cross-attention keys and values of its input.
#[derive(Debug, Clone)]
pub struct Seq2SeqCache {
    pub self_attn: KvCache,
    pub cross: Arc<CrossKv>,
}

impl Seq2SeqCache {
    /// Decoder positions cached.
    pub fn len(&self) -> usize {
        self.self_attn.len()
    }

    /// True before the decoder prompt is processed.
    pub fn is_empty(&self) -> bool {
        self.self_attn.is_empty()
    }

    /// A copy with a self-attention cache of its own (the cross-attention is shared).
    pub fn fork(&self) -> Result<Seq2SeqCache> {
        Ok(Seq2SeqCache {
            self_attn: self.self_attn.fork()?,
            cross: Arc::clone(&self.cross),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_in_place_and_grows_by_doubling() {
        let dev = Device::Cpu;
        let mut cache = KvCache::new(1, 2, 3, 2, DType::F32, &dev).unwrap();
        let step = |i: f32| Tensor::full(i, (1, 2, 3), &dev).unwrap();
        for i in 0..5 {
            let (k, _) = cache
                .append(0, &step(i as f32), &step(-(i as f32)))
                .unwrap();
            assert_eq!(k.dims(), [2, i + 1, 3]);
        }
        assert_eq!(cache.len(), 5);
        assert_eq!(cache.capacity(), 8);
        let (k, v) = cache.append(0, &step(5.0), &step(-5.0)).unwrap();
        let k: Vec<f32> = k
            .get(1)
            .unwrap()
            .get_on_dim(1, 0)
            .unwrap()
            .to_vec1()
            .unwrap();
        let per_pos: Vec<f32> = (0..6).map(|i| i as f32).collect();
        assert_eq!(k, per_pos);
        assert_eq!(v.dims(), [2, 6, 3]);
    }

    #[test]
    fn a_fork_appends_apart() {
        let dev = Device::Cpu;
        let mut cache = KvCache::new(1, 1, 2, 4, DType::F32, &dev).unwrap();
        let step = |i: f32| Tensor::full(i, (1, 1, 2), &dev).unwrap();
        cache.write(0, &step(1.0), &step(1.0)).unwrap();
        let mut fork = cache.fork().unwrap();
        cache.write(0, &step(2.0), &step(2.0)).unwrap();
        fork.write(0, &step(3.0), &step(3.0)).unwrap();
        let keys = |c: &KvCache| -> Vec<f32> {
            c.view(0)
                .unwrap()
                .0
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        assert_eq!(keys(&cache), [1.0, 1.0, 2.0, 2.0]);
        assert_eq!(keys(&fork), [1.0, 1.0, 3.0, 3.0]);
    }
}
