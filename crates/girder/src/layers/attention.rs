//! Attention, device-neutral: bidirectional attention of packed sequences (encoders) and
//! causal attention over each sequence's key/value cache (decoders). On the CPU the causal
//! rows go through girder's row kernel ([`super::cpu::attention`]); elsewhere, and when
//! gradients are tracked, through candle's batched GEMMs.

use super::cpu::attention::{attend_rows, QueryRow};
use super::cpu::team;
use super::Dropout;
use crate::error::Result;
use candle_core::Tensor;

/// `m · n · k` from which the `gemm` crate behind candle's matmul splits a product over
/// rayon's threads (its `DEFAULT_THREADING_THRESHOLD`); below, it runs on the calling thread
/// and the team may keep polling.
const GEMM_THREADING_THRESHOLD: usize = 48 * 48 * 256;

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
    Ok(
        varlen_attention(&q, &k, &v, cu_seqlens, bias, probs_dropout)?
            .reshape((n, heads * head_dim))?,
    )
}

/// Bidirectional scaled dot-product attention of each sequence over its own tokens, on
/// packed input (encoders: no padding exists, so no mask is needed).
///
/// `q`, `k`, `v`: `[total_tokens, heads, head_dim]` f32; sequence `i` owns rows
/// `cu_seqlens[i]..cu_seqlens[i + 1]`. Returns `[total_tokens, heads, head_dim]`. `bias`, when
/// given, is added to the scaled scores before the softmax (MPNet's and T5's relative
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
    bias: Option<&Tensor>,
    probs_dropout: &Dropout,
) -> Result<Tensor> {
    let head_dim = q.dim(2)?;
    let scale = 1.0 / (head_dim as f64).sqrt();
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
        let q = (heads_first(q)? * scale)?;
        let (k, v) = (heads_first(k)?, heads_first(v)?);
        let scores = q.matmul(&k.t()?)?; // [heads, len, len]
        let scores = match bias {
            Some(bias) => (scores + bias.narrow(1, 0, len)?.narrow(2, 0, len)?)?,
            None => scores,
        };
        let probs = super::cpu::kernels::softmax_last_dim(scores)?;
        let probs = probs_dropout.forward(probs)?;
        outs.push(probs.matmul(&v)?.transpose(0, 1)?); // [len, heads, head_dim]
    }
    Ok(match outs.len() {
        1 => outs.remove(0).contiguous()?,
        _ => Tensor::cat(&outs, 0)?,
    })
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
/// transformers' `repeat_kv`). Returns `[t, heads * head_dim]`.
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    window: Option<usize>,
    scale: f64,
) -> Result<Tensor> {
    let (t, heads, head_dim) = q.dims3()?;
    let (kv_heads, kv_len, _) = k.dims3()?;
    let groups = heads / kv_heads;
    let first = kv_len - t; // position of the first query
    let rows: Vec<QueryRow> = (0..t)
        .map(|i| QueryRow::causal(0, first + i, window))
        .collect();
    if let Some(out) = attend_rows(q, &rows, &[(k.clone(), v.clone())], scale as f32)? {
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
    let scores = if needs_mask {
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
/// `layer` its keys and values are appended first. Returns `[total_tokens, heads * head_dim]`.
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
    if let Some(out) = attend_rows(q, &rows, &buffers, scale as f32)? {
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
            causal_attention(&q.narrow(0, start, len)?, keys, values, window, scale)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(if outs.len() == 1 {
        outs.into_iter().next().expect("one sequence")
    } else {
        Tensor::cat(&outs, 0)?
    })
}
