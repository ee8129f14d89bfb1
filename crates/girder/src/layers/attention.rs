use crate::error::Result;
use candle_core::Tensor;

/// Bidirectional scaled dot-product attention of each sequence over its own tokens, on
/// packed input (encoders: no padding exists, so no mask is needed).
///
/// `q`, `k`, `v`: `[total_tokens, heads, head_dim]` f32; sequence `i` owns rows
/// `cu_seqlens[i]..cu_seqlens[i + 1]`. Returns `[total_tokens, heads, head_dim]`.
///
/// Each sequence is two batched GEMMs (`QKᵀ` over all heads, then `PV`) around one softmax.
/// candle's `flash_attn_varlen_cpu` computes the same with a scalar dot product and one
/// `exp` per query-key pair in its online softmax; on 512-token inputs it spent over half
/// the forward pass there (perf, workload (c) of the encoder benchmark).
pub fn varlen_attention(q: &Tensor, k: &Tensor, v: &Tensor, cu_seqlens: &[u32]) -> Result<Tensor> {
    let head_dim = q.dim(2)?;
    let scale = 1.0 / (head_dim as f64).sqrt();
    let mut outs = Vec::with_capacity(cu_seqlens.len().saturating_sub(1));
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
        let probs = super::kernels::softmax_last_dim(scores)?;
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
    let probs = super::kernels::softmax_last_dim(scores)?;
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
    let mut outs = Vec::with_capacity(caches.len());
    for (i, cache) in caches.iter_mut().enumerate() {
        let start = cu_seqlens[i] as usize;
        let len = cu_seqlens[i + 1] as usize - start;
        let (keys, values) =
            cache.append(layer, &k.narrow(0, start, len)?, &v.narrow(0, start, len)?)?;
        outs.push(causal_attention(
            &q.narrow(0, start, len)?,
            &keys,
            &values,
            window,
            scale,
        )?);
    }
    Ok(if outs.len() == 1 {
        outs.remove(0)
    } else {
        Tensor::cat(&outs, 0)?
    })
}
