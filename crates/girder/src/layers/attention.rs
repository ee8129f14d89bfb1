//! Attention, device-neutral: bidirectional attention of packed sequences (encoders), causal
//! attention over each sequence's key/value cache (decoders), and cross-attention of a
//! decoder's tokens over their input's encoder output (encoder-decoders). On the CPU the
//! causal and cross-attention rows go through girder's row kernel
//! ([`super::cpu::attention`]); elsewhere, and when gradients are tracked, through candle's
//! batched GEMMs.

use super::cpu::attention::{attend_rows, QueryRow};
use super::cpu::team;
use super::Dropout;
use crate::error::Result;
use candle_core::Tensor;

/// `m · n · k` from which the `gemm` crate behind candle's matmul splits a product over
/// rayon's threads (its `DEFAULT_THREADING_THRESHOLD`); below, it runs on the calling thread
/// and the team may keep polling.
const GEMM_THREADING_THRESHOLD: usize = 48 * 48 * 256;

/// The score matrix of one block of queries of a sequence at most, in bytes (f32); longer
/// sequences are attended in blocks of query rows.
const SCORES_BYTES: usize = 4 << 20;

/// Bidirectional self-attention of a packed batch from its fused projection: `qkv` is
/// `[total_tokens, 3 · heads · head_dim]` (queries, keys, values side by side, as
/// [`super::Linear::concat`] of the three projections gives it). Returns the context
/// `[total_tokens, heads · head_dim]`, before the output projection. `bias` and
/// `probs_dropout` as for [`varlen_attention`].
pub fn packed_self_attention(
    qkv: &Tensor,
    heads: usize,
    head_dim: usize,
    cu_seqlens: &[u32],
    bias: Option<&Tensor>,
    probs_dropout: &Dropout,
) -> Result<Tensor> {
    let n = qkv.dim(0)?;
    // [n, 3 · heads, head_dim]: q, k and v as views, heads `0..`, `heads..`, `2 · heads..`
    let qkv = qkv.reshape((n, 3 * heads, head_dim))?;
    let (q, k, v) = (
        qkv.narrow(1, 0, heads)?,
        qkv.narrow(1, heads, heads)?,
        qkv.narrow(1, 2 * heads, heads)?,
    );
    let scale = 1.0 / (head_dim as f64).sqrt();
    Ok(
        varlen_attention(&q, &k, &v, cu_seqlens, scale, bias, probs_dropout)?
            .reshape((n, heads * head_dim))?,
    )
}

/// [`packed_self_attention`] for each sequence's first token only: its query over its own
/// sequence's keys and values. `q`: `[num_seqs, heads · head_dim]`, the first tokens'
/// queries; `kv`: `[total_tokens, 2 · heads · head_dim]`, every token's keys and values side
/// by side. Returns `[num_seqs, heads · head_dim]`, the rows of `packed_self_attention`'s
/// context at `cu_seqlens[..num_seqs]`.
///
/// What a sequence classifier reads of an encoder's last layer (the first token's row), for
/// training that layer: all sequences' queries meet all keys in three batched GEMMs, the
/// keys of other sequences masked, instead of two GEMMs and a softmax per sequence.
pub fn packed_first_token_attention(
    q: &Tensor,
    kv: &Tensor,
    heads: usize,
    head_dim: usize,
    cu_seqlens: &[u32],
    probs_dropout: &Dropout,
) -> Result<Tensor> {
    let n = kv.dim(0)?;
    let num_seqs = cu_seqlens.len().saturating_sub(1);
    let kv = kv.reshape((n, 2 * heads, head_dim))?;
    let scale = 1.0 / (head_dim as f64).sqrt();
    // [heads, num_seqs, head_dim], [heads, head_dim, n], [heads, n, head_dim]
    let q = (q
        .reshape((num_seqs, heads, head_dim))?
        .transpose(0, 1)?
        .contiguous()?
        * scale)?;
    let k_t = kv.narrow(1, 0, heads)?.permute((1, 2, 0))?.contiguous()?;
    let v = kv.narrow(1, heads, heads)?.transpose(0, 1)?.contiguous()?;
    // 0 over a sequence's own tokens, -inf over the others': [num_seqs, n]
    let mut mask = vec![f32::NEG_INFINITY; num_seqs * n];
    for (i, bounds) in cu_seqlens.windows(2).enumerate() {
        mask[i * n + bounds[0] as usize..i * n + bounds[1] as usize].fill(0.0);
    }
    let mask = Tensor::from_vec(mask, (num_seqs, n), kv.device())?;
    let scores = q.matmul(&k_t)?.broadcast_add(&mask)?; // [heads, num_seqs, n]
    let probs = probs_dropout.forward(super::cpu::kernels::softmax_last_dim(scores)?)?;
    Ok(probs
        .matmul(&v)? // [heads, num_seqs, head_dim]
        .transpose(0, 1)?
        .reshape((num_seqs, heads * head_dim))?)
}

/// Bidirectional scaled dot-product attention of each sequence over its own tokens, on
/// packed input (encoders: no padding exists, so no mask is needed).
///
/// `q`, `k`, `v`: `[total_tokens, heads, head_dim]` f32; sequence `i` owns rows
/// `cu_seqlens[i]..cu_seqlens[i + 1]`. Returns `[total_tokens, heads, head_dim]`. Scores are
/// `scale · q·k` (`1/√head_dim` in most models, 1 in T5). `bias`, when given, is added to the
/// scaled scores before the softmax (MPNet's and T5's relative
/// position bias): `[heads, m, m]` with `m` at least the longest sequence, a sequence of
/// `len` tokens adding its top-left `[heads, len, len]` block (a bias that depends only on
/// key minus query position is the same for every sequence). `probs_dropout` drops
/// attention probabilities in a training pass (`attention_probs_dropout_prob`).
///
/// Each sequence is two batched GEMMs (`QKᵀ` over all heads, then `PV`) around one softmax.
/// candle's `flash_attn_varlen_cpu` computes the same with a scalar dot product and one
/// `exp` per query-key pair in its online softmax; on 512-token inputs it spent over half
/// the forward pass there (perf, workload (c) of the encoder benchmark).
pub fn varlen_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cu_seqlens: &[u32],
    scale: f64,
    bias: Option<&Tensor>,
    probs_dropout: &Dropout,
) -> Result<Tensor> {
    let head_dim = q.dim(2)?;
    let mut outs = Vec::with_capacity(cu_seqlens.len().saturating_sub(1));
    let longest = cu_seqlens
        .windows(2)
        .map(|b| b[1] - b[0])
        .max()
        .unwrap_or(0) as usize;
    if longest * longest * head_dim >= GEMM_THREADING_THRESHOLD {
        // candle's matmuls below will run on rayon's threads.
        team::rest();
    }
    for bounds in cu_seqlens.windows(2) {
        let (start, len) = (bounds[0] as usize, (bounds[1] - bounds[0]) as usize);
        if len == 0 {
            continue;
        }
        // [len, heads, head_dim] → [heads, len, head_dim]
        let heads_first = |t: &Tensor| t.narrow(0, start, len)?.transpose(0, 1)?.contiguous();
        let q = if scale == 1.0 {
            heads_first(q)?
        } else {
            (heads_first(q)? * scale)?
        };
        let (k, v) = (heads_first(k)?, heads_first(v)?);
        let k_t = k.t()?;
        // Queries in blocks whose scores stay within SCORES_BYTES: a 1,500-position sequence
        // (Whisper's encoder) would otherwise write and read a 54 MB score matrix per layer,
        // freshly allocated (and page-faulted in) each time.
        let heads = q.dim(0)?;
        let rows = (SCORES_BYTES / (heads * len * 4).max(1)).clamp(1, len);
        let mut blocks = Vec::with_capacity(len.div_ceil(rows));
        for first in (0..len).step_by(rows) {
            let n = rows.min(len - first);
            let q = if n == len {
                q.clone()
            } else {
                q.narrow(1, first, n)?
            };
            let scores = q.matmul(&k_t)?; // [heads, n, len]
            let scores = match bias {
                Some(bias) => (scores + bias.narrow(1, first, n)?.narrow(2, 0, len)?)?,
                None => scores,
            };
            let probs = super::cpu::kernels::softmax_last_dim(scores)?;
            let probs = probs_dropout.forward(probs)?;
            blocks.push(probs.matmul(&v)?); // [heads, n, head_dim]
        }
        let out = match blocks.len() {
            1 => blocks.remove(0),
            _ => Tensor::cat(&blocks, 1)?,
        };
        outs.push(out.transpose(0, 1)?); // [len, heads, head_dim]
    }
    Ok(match outs.len() {
        1 => outs.remove(0).contiguous()?,
        _ => Tensor::cat(&outs, 0)?,
    })
}

/// A bias added to a decoder's self-attention scores that depends only on how far a key
/// lies behind its query (T5's relative position bias, Raffel et al. 2020, §2.1): head `h`
/// adds `table[h][min(query − key, width − 1)]`, distances from `width − 1` on sharing the
/// last column (T5's buckets stop growing at `relative_attention_max_distance`).
#[derive(Debug, Clone)]
pub struct DistanceBias {
    /// `[heads, width]`, row-major.
    table: Vec<f32>,
    width: usize,
}

impl DistanceBias {
    /// `table` `[heads · width]`: head `h`'s bias for distance `d` at `h · width + d`.
    pub fn new(table: Vec<f32>, heads: usize, width: usize) -> Result<Self> {
        if width == 0 || table.len() != heads * width {
            return Err(candle_core::Error::Msg(format!(
                "a distance bias of {heads} heads and width {width} needs {} values, not {}",
                heads * width,
                table.len()
            ))
            .into());
        }
        Ok(DistanceBias { table, width })
    }

    /// Head `h`'s bias of a key `distance` positions behind its query.
    pub fn get(&self, h: usize, distance: usize) -> f32 {
        self.table[h * self.width + distance.min(self.width - 1)]
    }

    fn kernel(&self) -> super::cpu::attention::DistanceBias<'_> {
        super::cpu::attention::DistanceBias {
            table: &self.table,
            width: self.width,
        }
    }
}

/// Causal attention of a sequence's new tokens over its cached keys and values (decoders).
///
/// `q`: `[t, heads, head_dim]`, the `t` newest tokens (rotary embedding applied); `k`, `v`:
/// `[kv_heads, kv_len, head_dim]` from [`KvCache::append`](super::KvCache::append), whose
/// last `t` positions are those tokens. Query `i` sits at position `kv_len - t + i` and sees
/// keys up to it; with `window = Some(w)` only the `w` latest of those, itself included
/// (Mistral's sliding window: key `j` is seen when `i - w < j <= i`, as transformers'
/// `sliding_window_causal_mask_function`). `heads` must be a multiple of `kv_heads`
/// (grouped-query attention: query head `h` reads kv head `h / (heads / kv_heads)`, as
/// transformers' `repeat_kv`). `bias` adds a [`DistanceBias`] to the scores. Returns
/// `[t, heads * head_dim]`.
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    window: Option<usize>,
    scale: f64,
    bias: Option<&DistanceBias>,
) -> Result<Tensor> {
    let (t, heads, head_dim) = q.dims3()?;
    let (kv_heads, kv_len, _) = k.dims3()?;
    let groups = heads / kv_heads;
    let first = kv_len - t; // position of the first query
    let rows: Vec<QueryRow> = (0..t)
        .map(|i| QueryRow::causal(0, first + i, window))
        .collect();
    let kernel_bias = bias.map(DistanceBias::kernel);
    if let Some(out) = attend_rows(
        q,
        &rows,
        &[(k.clone(), v.clone())],
        scale as f32,
        kernel_bias.as_ref(),
    )? {
        return Ok(out);
    }
    // Keys no query can see (before the first query's window) are skipped outright.
    let start = match window {
        Some(w) => (first + 1).saturating_sub(w),
        None => 0,
    };
    let (k, v) = if start > 0 {
        (
            k.narrow(1, start, kv_len - start)?,
            v.narrow(1, start, kv_len - start)?,
        )
    } else {
        (k.clone(), v.clone())
    };
    let keys = kv_len - start;
    let q = q
        .transpose(0, 1)?
        .contiguous()?
        .reshape((kv_heads, groups * t, head_dim))?;
    let scores = (q.matmul(&k.t()?)? * scale)?; // [kv_heads, groups * t, keys]
    let needs_mask = t > 1 || window.is_some_and(|w| keys > w);
    let scores = if let Some(bias) = bias {
        // One additive term per head, query and key: the bias of visible keys, -inf elsewhere.
        let mut added = vec![0f32; heads * t * keys];
        for h in 0..heads {
            for i in 0..t {
                let pos = first + i;
                for j in 0..keys {
                    let key = start + j;
                    let hidden = key > pos || window.is_some_and(|w| key + w <= pos);
                    added[(h * t + i) * keys + j] = if hidden {
                        f32::NEG_INFINITY
                    } else {
                        bias.get(h, pos - key)
                    };
                }
            }
        }
        let added = Tensor::from_vec(added, (kv_heads, groups * t, keys), q.device())?;
        (scores + added)?
    } else if needs_mask {
        let mut mask = vec![0f32; t * keys];
        for i in 0..t {
            let pos = first + i;
            for j in 0..keys {
                let key = start + j;
                let hidden = key > pos || window.is_some_and(|w| key + w <= pos);
                if hidden {
                    mask[i * keys + j] = f32::NEG_INFINITY;
                }
            }
        }
        let mask = Tensor::from_vec(mask, (t, keys), q.device())?;
        scores
            .reshape((kv_heads, groups, t, keys))?
            .broadcast_add(&mask)?
            .reshape((kv_heads, groups * t, keys))?
    } else {
        scores
    };
    let probs = super::cpu::kernels::softmax_last_dim(scores)?;
    let out = probs.matmul(&v.contiguous()?)?; // [kv_heads, groups * t, head_dim]
    Ok(out
        .reshape((heads, t, head_dim))?
        .transpose(0, 1)?
        .reshape((t, heads * head_dim))?)
}

/// [`causal_attention`] for every sequence of a packed batch, each over its own cache.
///
/// `q`: `[total_tokens, heads, head_dim]`, `k`, `v`: `[total_tokens, kv_heads, head_dim]`;
/// sequence `i` owns rows `cu_seqlens[i]..cu_seqlens[i + 1]` and `caches[i]`, into whose
/// `layer` its keys and values are appended first. `bias` adds a [`DistanceBias`] to the
/// scores. Returns `[total_tokens, heads * head_dim]`.
#[allow(clippy::too_many_arguments)] // the per-layer inputs, each needed
pub fn ragged_causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cu_seqlens: &[u32],
    caches: &mut [&mut super::KvCache],
    layer: usize,
    window: Option<usize>,
    scale: f64,
    bias: Option<&DistanceBias>,
) -> Result<Tensor> {
    let spans: Vec<(usize, usize)> = cu_seqlens
        .windows(2)
        .map(|w| (w[0] as usize, (w[1] - w[0]) as usize))
        .take(caches.len())
        .collect();
    // One copy of the batch's keys and values in row order (`v` is a strided view of the
    // fused projection): each sequence's rows are then a contiguous range written straight
    // into its cache, instead of a copy per sequence and layer.
    let (k, v) = (k.contiguous()?, v.contiguous()?);
    let mut buffers = Vec::with_capacity(caches.len());
    let mut rows = Vec::with_capacity(q.dim(0)?);
    for (seq, (cache, &(start, len))) in caches.iter_mut().zip(&spans).enumerate() {
        cache.write(layer, &k.narrow(0, start, len)?, &v.narrow(0, start, len)?)?;
        let first = cache.layer_len(layer) - len; // position of the sequence's first new token
        rows.extend((0..len).map(|i| QueryRow::causal(seq, first + i, window)));
        // The whole buffers: the rows say which positions each query reads.
        buffers.push(cache.buffers(layer));
    }
    // Every row of every sequence in one parallel region.
    let kernel_bias = bias.map(DistanceBias::kernel);
    if let Some(out) = attend_rows(q, &rows, &buffers, scale as f32, kernel_bias.as_ref())? {
        return Ok(out);
    }
    let kv = caches
        .iter()
        .map(|cache| cache.view(layer))
        .collect::<Result<Vec<_>>>()?;
    let outs = spans
        .iter()
        .zip(&kv)
        .map(|(&(start, len), (keys, values))| {
            causal_attention(&q.narrow(0, start, len)?, keys, values, window, scale, bias)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(if outs.len() == 1 {
        outs.into_iter().next().expect("one sequence")
    } else {
        Tensor::cat(&outs, 0)?
    })
}

/// Cross-attention of each sequence's new decoder tokens over its input's encoder output:
/// every source position is visible, so there is no mask.
///
/// `q`: `[total_tokens, heads, head_dim]`, sequence `i` owning rows `cu_seqlens[i]..cu_seqlens[i
/// + 1]`; `kv[i]`: sequence `i`'s keys and values `[heads, source_len, head_dim]` (a
/// [`CrossKv`](super::CrossKv) layer). Returns `[total_tokens, heads * head_dim]`.
pub fn cross_attention(
    q: &Tensor,
    cu_seqlens: &[u32],
    kv: &[(Tensor, Tensor)],
    scale: f64,
) -> Result<Tensor> {
    let (n, heads, head_dim) = q.dims3()?;
    let mut rows = Vec::with_capacity(n);
    for (seq, bounds) in cu_seqlens.windows(2).enumerate() {
        let source_len = kv.get(seq).map_or(0, |(k, _)| k.dims()[1]);
        rows.extend((bounds[0]..bounds[1]).map(|_| QueryRow {
            seq,
            keys: 0..source_len,
        }));
    }
    if let Some(out) = attend_rows(q, &rows, kv, scale as f32, None)? {
        return Ok(out);
    }
    let mut outs = Vec::with_capacity(kv.len());
    for (bounds, (k, v)) in cu_seqlens.windows(2).zip(kv) {
        let (start, len) = (bounds[0] as usize, (bounds[1] - bounds[0]) as usize);
        if len == 0 {
            continue;
        }
        let q = (q.narrow(0, start, len)?.transpose(0, 1)?.contiguous()? * scale)?; // [heads, len, d]
        let scores = q.matmul(&k.t()?)?; // [heads, len, source_len]
        let probs = super::cpu::kernels::softmax_last_dim(scores)?;
        outs.push(probs.matmul(&v.contiguous()?)?.transpose(0, 1)?); // [len, heads, d]
    }
    let out = match outs.len() {
        1 => outs.remove(0).contiguous()?,
        _ => Tensor::cat(&outs, 0)?,
    };
    Ok(out.reshape((n, heads * head_dim))?)
}
