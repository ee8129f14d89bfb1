//! Attention's row kernel: every query row of a batch against its own sequence's cache,
//! read where it lies; a dot product with each visible key, a softmax and a weighted sum of
//! the values per head, in registers, on the [`team`]'s threads.

use super::team;
use crate::error::Result;
use candle_core::{CpuStorage, Storage, Tensor};

/// Query row `r` of a batch: it attends to positions `keys` of sequence `seq`'s cache.
pub(crate) struct QueryRow {
    pub(crate) seq: usize,
    pub(crate) keys: std::ops::Range<usize>,
}

impl QueryRow {
    /// The query at `position` of sequence `seq`: keys up to it, the `window` latest of them.
    pub(crate) fn causal(seq: usize, position: usize, window: Option<usize>) -> QueryRow {
        let end = position + 1;
        QueryRow {
            seq,
            keys: window.map_or(0, |w| end.saturating_sub(w))..end,
        }
    }
}

/// A score bias that depends on how far a key lies behind its query (T5's relative position
/// bias in a decoder): head `h` adds `table[h · width + min(query − key, width − 1)]`.
pub(crate) struct DistanceBias<'a> {
    pub(crate) table: &'a [f32],
    pub(crate) width: usize,
}

impl DistanceBias<'_> {
    /// The bias of head `h` for a query at `query` over keys `keys`, into `out`.
    fn gather(&self, h: usize, query: usize, keys: &std::ops::Range<usize>, out: &mut Vec<f32>) {
        let row = &self.table[h * self.width..(h + 1) * self.width];
        out.clear();
        out.extend(
            keys.clone()
                .map(|key| row[query.saturating_sub(key).min(self.width - 1)]),
        );
    }
}

/// Attention row by row, reading each sequence's cache where it lies: for every query row
/// and head a dot product with each visible key, a softmax, a weighted sum of the values
/// (`attend_one_head`), every (row, kv head) pair one task on the [`team`]'s threads. `q`
/// `[rows, heads, head_dim]`; `kv[s]` sequence `s`'s keys and values `[kv_heads, len,
/// head_dim]` in the cache's layout. With `bias`, a causal row (its last key is its own
/// position) adds the bias of each key's distance to its score. `None` when the tensors are
/// not f32 CPU tensors in that layout (or track gradients): the caller takes the GEMM path.
///
/// Why rows: a row's result is then computed the same way whatever else is in the batch: a
/// prompt's rows equal the decode steps that would compute them one at a time, and a
/// sequence's equal its rows in any batch, so greedy output does not depend on batching,
/// chunking or a reused prompt prefix. The GEMM path (`QKᵀ`, mask, `PV`) sums in an order
/// that depends on the shapes; it spent a decode step's attention in fixed costs (a
/// transpose, two batched GEMMs on `[3, 3, 64]`-sized operands, the value view copied) and
/// long prompts in building masks. Attention is a few percent of a prompt's arithmetic.
pub(crate) fn attend_rows(
    q: &Tensor,
    rows: &[QueryRow],
    kv: &[(Tensor, Tensor)],
    scale: f32,
    bias: Option<&DistanceBias>,
) -> Result<Option<Tensor>> {
    let (n, heads, head_dim) = q.dims3()?;
    let usable =
        |t: &Tensor| t.device().is_cpu() && t.dtype() == candle_core::DType::F32 && !t.track_op();
    if !usable(q) || rows.len() != n {
        return Ok(None);
    }
    for (k, v) in kv {
        // The cache's layout: heads apart by some stride, positions by `head_dim`, values by 1.
        let strides = k.stride();
        if !(usable(k) && usable(v))
            || k.layout() != v.layout()
            || strides[1] != head_dim
            || strides[2] != 1
            || heads % k.dim(0)? != 0
        {
            return Ok(None);
        }
    }
    if rows
        .iter()
        .any(|r| r.seq >= kv.len() || r.keys.end > kv[r.seq].0.dims()[1])
    {
        return Ok(None);
    }
    let q = q.contiguous()?;
    let (q_storage, q_layout) = q.storage_and_layout();
    let Storage::Cpu(CpuStorage::F32(qd)) = &*q_storage else {
        return Ok(None);
    };
    let qd = &qd[q_layout.start_offset()..];
    let guards: Vec<_> = kv
        .iter()
        .map(|(k, v)| (k.storage_and_layout(), v.storage_and_layout().0))
        .collect();
    /// A sequence's cache: keys, values, first offset, stride between kv heads, kv heads.
    type Cached<'a> = (&'a [f32], &'a [f32], usize, usize, usize);
    let mut cached: Vec<Cached> = Vec::with_capacity(kv.len());
    for ((k_storage, layout), v_storage) in &guards {
        let (Storage::Cpu(CpuStorage::F32(kd)), Storage::Cpu(CpuStorage::F32(vd))) =
            (&**k_storage, &**v_storage)
        else {
            return Ok(None);
        };
        let (offset, head_stride) = (layout.start_offset(), layout.stride()[0]);
        cached.push((kd, vd, offset, head_stride, layout.dims()[0]));
    }
    // One task per query row and kv head: the query heads that share a kv head (grouped-query
    // attention: query head `h` reads kv head `h / (heads / kv_heads)`, as transformers'
    // `repeat_kv`) run one after another on one thread, so that the keys and values come
    // from memory once and from cache for the others. A task's heads are adjacent in `q` and
    // in the output.
    let kv_heads = cached.first().map_or(heads, |c| c.4);
    if cached.iter().any(|c| c.4 != kv_heads) {
        return Ok(None);
    }
    let groups = heads / kv_heads;
    let attend = |task: usize, out: &mut [f32], scratch: &mut Scratch| {
        let (r, kv_head) = (task / kv_heads, task % kv_heads);
        let row = &rows[r];
        let (kd, vd, offset, head_stride, _) = cached[row.seq];
        let base = offset + kv_head * head_stride;
        let span = base + row.keys.start * head_dim..base + row.keys.end * head_dim;
        for (g, out) in out.chunks_mut(head_dim).enumerate() {
            let h = kv_head * groups + g;
            let q_row = &qd[(r * heads + h) * head_dim..][..head_dim];
            let row_bias = match bias {
                Some(bias) => {
                    let query = row.keys.end.saturating_sub(1);
                    bias.gather(h, query, &row.keys, &mut scratch.bias);
                    Some(scratch.bias.as_slice())
                }
                None => None,
            };
            attend_one_head(
                q_row,
                &kd[span.clone()],
                &vd[span.clone()],
                scale,
                row_bias,
                out,
                &mut scratch.scores,
            );
        }
    };
    let mut out = vec![0f32; n * heads * head_dim];
    let work: usize = rows.iter().map(|r| r.keys.len()).sum::<usize>() * head_dim;
    // Below a few thousand multiply-adds per head a parallel region costs more than it saves.
    if work >= 4096 {
        thread_local! {
            static SCRATCH: std::cell::RefCell<Scratch> = const { std::cell::RefCell::new(Scratch::new()) };
        }
        team::for_each_chunk(&mut out, groups * head_dim, |task, o| {
            SCRATCH.with(|scratch| attend(task, o, &mut scratch.borrow_mut()))
        });
    } else {
        let mut scratch = Scratch::new();
        for (task, o) in out.chunks_mut(groups * head_dim).enumerate() {
            attend(task, o, &mut scratch);
        }
    }
    drop(guards);
    drop(q_storage);
    Ok(Some(Tensor::from_vec(
        out,
        (n, heads * head_dim),
        q.device(),
    )?))
}

/// A thread's scratch space for one head's row: its scores and their bias.
struct Scratch {
    scores: Vec<f32>,
    bias: Vec<f32>,
}

impl Scratch {
    const fn new() -> Self {
        Scratch {
            scores: Vec::new(),
            bias: Vec::new(),
        }
    }
}

/// `out = softmax(scale · keys q + bias) values` for one head, `keys` and `values` `[n, d]`
/// row-major, `bias` (when given) one value per key; `scores` is scratch space (reused
/// between calls).
fn attend_one_head(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    scale: f32,
    bias: Option<&[f32]>,
    out: &mut [f32],
    scores: &mut Vec<f32>,
) {
    const LANES: usize = 16;
    /// The 16 lanes summed pairwise (a fixed order, a few vector instructions).
    #[inline(always)]
    fn sum_lanes(lanes: [f32; LANES]) -> f32 {
        let mut half = [0f32; 8];
        for i in 0..8 {
            half[i] = lanes[i] + lanes[i + 8];
        }
        let mut quarter = [0f32; 4];
        for i in 0..4 {
            quarter[i] = half[i] + half[i + 4];
        }
        (quarter[0] + quarter[2]) + (quarter[1] + quarter[3])
    }
    // Plain loops on fixed-size chunks: iterator adapters would be compiled outside this
    // function's target features (perf: the dot products ran as SSE code in `Map::fold`),
    // and a runtime-length inner loop kept its accumulators in memory.
    #[inline(always)]
    fn generic(
        q: &[f32],
        keys: &[f32],
        values: &[f32],
        scale: f32,
        bias: Option<&[f32]>,
        out: &mut [f32],
        scores: &mut Vec<f32>,
    ) {
        let d = q.len();
        scores.clear();
        scores.resize(keys.len() / d, 0.0);
        dot_products(q, keys, scale, scores);
        add_bias(scores, bias);
        softmax_and_values(scores, values, d, out);
    }
    #[inline(always)]
    fn add_bias(scores: &mut [f32], bias: Option<&[f32]>) {
        if let Some(bias) = bias {
            for (s, b) in scores.iter_mut().zip(bias) {
                *s += b;
            }
        }
    }
    /// `scores[k] = scale · q · keys[k]`.
    #[inline(always)]
    fn dot_products(q: &[f32], keys: &[f32], scale: f32, scores: &mut [f32]) {
        let d = q.len();
        let chunks = d / LANES;
        for (score, key) in scores.iter_mut().zip(keys.chunks_exact(d)) {
            let mut lanes = [0f32; LANES];
            for c in 0..chunks {
                let a: &[f32; LANES] = q[c * LANES..(c + 1) * LANES].try_into().expect("a chunk");
                let b: &[f32; LANES] = key[c * LANES..(c + 1) * LANES].try_into().expect("a chunk");
                for i in 0..LANES {
                    lanes[i] = a[i].mul_add(b[i], lanes[i]);
                }
            }
            let mut total = sum_lanes(lanes);
            for j in chunks * LANES..d {
                total = q[j].mul_add(key[j], total);
            }
            *score = total * scale;
        }
    }
    #[inline(always)]
    fn softmax_and_values(scores: &mut [f32], values: &[f32], d: usize, out: &mut [f32]) {
        super::kernels::softmax_row(scores);
        // Columns in slices of 128, 64 and 16 (Gemma's 256-wide heads: two slices of 128),
        // each slice's sums in registers; the last `d mod 16` columns key by key.
        let mut column = 0;
        while column + 8 * LANES <= d {
            weighted_values::<8>(scores, values, d, column, &mut out[column..]);
            column += 8 * LANES;
        }
        if column + 4 * LANES <= d {
            weighted_values::<4>(scores, values, d, column, &mut out[column..]);
            column += 4 * LANES;
        }
        while column + LANES <= d {
            weighted_values::<1>(scores, values, d, column, &mut out[column..]);
            column += LANES;
        }
        if column < d {
            out[column..d].iter_mut().for_each(|o| *o = 0.0);
            for (p, value) in scores.iter().zip(values.chunks_exact(d)) {
                for (o, v) in out[column..d].iter_mut().zip(&value[column..]) {
                    *o = p.mul_add(*v, *o);
                }
            }
        }
    }
    /// `out[..C · 16] = Σ_k p_k v_k[first..first + C · 16]` for value rows of `d`: the slice
    /// of the output row in registers, even and odd keys into two sets of accumulators (one
    /// chain of dependent multiply-adds per 16 columns made a 512-position decode step wait on
    /// their latency), added at the end.
    #[inline(always)]
    fn weighted_values<const C: usize>(
        scores: &[f32],
        values: &[f32],
        d: usize,
        first: usize,
        out: &mut [f32],
    ) {
        let mut even = [[0f32; LANES]; C];
        let mut odd = [[0f32; LANES]; C];
        let pairs = scores.len() / 2;
        for k in 0..pairs {
            let (p0, p1) = (scores[2 * k], scores[2 * k + 1]);
            let v0 = &values[2 * k * d + first..(2 * k + 1) * d];
            let v1 = &values[(2 * k + 1) * d + first..(2 * k + 2) * d];
            for c in 0..C {
                let a: &[f32; LANES] = v0[c * LANES..(c + 1) * LANES].try_into().expect("a chunk");
                let b: &[f32; LANES] = v1[c * LANES..(c + 1) * LANES].try_into().expect("a chunk");
                for i in 0..LANES {
                    even[c][i] = p0.mul_add(a[i], even[c][i]);
                    odd[c][i] = p1.mul_add(b[i], odd[c][i]);
                }
            }
        }
        if scores.len() % 2 == 1 {
            let (p, v) = (
                scores[2 * pairs],
                &values[2 * pairs * d + first..(2 * pairs + 1) * d],
            );
            for c in 0..C {
                for i in 0..LANES {
                    even[c][i] = p.mul_add(v[c * LANES + i], even[c][i]);
                }
            }
        }
        for c in 0..C {
            for i in 0..LANES {
                out[c * LANES + i] = even[c][i] + odd[c][i];
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        type Scores<'a> = &'a mut Vec<f32>;
        /// As `generic`, the dot products 16 keys at a time (`dot_products_avx512`).
        type Bias<'a> = Option<&'a [f32]>;
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512(
            q: &[f32],
            k: &[f32],
            v: &[f32],
            s: f32,
            b: Bias,
            o: &mut [f32],
            w: Scores,
        ) {
            let d = q.len();
            w.clear();
            w.resize(k.len() / d, 0.0);
            match d {
                64 => dot_products_avx512::<4>(q, k, s, w),
                128 => dot_products_avx512::<8>(q, k, s, w),
                256 => dot_products_avx512::<16>(q, k, s, w),
                _ => dot_products(q, k, s, w),
            }
            add_bias(w, b);
            softmax_and_values(w, v, d, o)
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(q: &[f32], k: &[f32], v: &[f32], s: f32, b: Bias, o: &mut [f32], w: Scores) {
            generic(q, k, v, s, b, o, w)
        }
        if crate::layers::cpu::avx512() {
            // SAFETY: the CPU has the features the function was compiled for.
            return unsafe { avx512(q, keys, values, scale, bias, out, scores) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: as above.
            return unsafe { avx2(q, keys, values, scale, bias, out, scores) };
        }
    }
    generic(q, keys, values, scale, bias, out, scores)
}

/// `scores[k] = scale · q · keys[k]` for `C · 16`-wide rows: 16 keys' products in 16
/// registers, summed by one transposing reduction (`sum_lanes_16`; the compiler had turned
/// the per-key loop into two-lane code), the last `n mod 16` keys (every key of a 256-wide
/// head) one by one with the same additions, so a key's score does not depend on where its
/// block of 16 starts.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)] // `c` picks a register of the query and a key's offset
unsafe fn dot_products_avx512<const C: usize>(
    q: &[f32],
    keys: &[f32],
    scale: f32,
    scores: &mut [f32],
) {
    use super::kernels::avx512::{sum_lanes, sum_lanes_16};
    use std::arch::x86_64::*;
    let d = C * 16;
    assert!(q.len() == d && keys.len() >= scores.len() * d);
    let mut qv = [_mm512_setzero_ps(); C];
    for c in 0..C {
        qv[c] = _mm512_loadu_ps(q.as_ptr().add(16 * c));
    }
    let product = |key: *const f32| {
        let mut acc = _mm512_mul_ps(qv[0], _mm512_loadu_ps(key));
        for c in 1..C {
            acc = _mm512_fmadd_ps(qv[c], _mm512_loadu_ps(key.add(16 * c)), acc);
        }
        acc
    };
    let n = scores.len();
    // 16 keys at a time keep 16 accumulators beside the query's C registers: for 256-wide
    // heads (C = 16) the 32 registers would spill, so those keys go one by one.
    let blocks = if C <= 8 { n / 16 } else { 0 };
    for b in 0..blocks {
        let mut acc = [_mm512_setzero_ps(); 16];
        for (j, a) in acc.iter_mut().enumerate() {
            *a = product(keys.as_ptr().add((16 * b + j) * d));
        }
        let sums = _mm512_mul_ps(sum_lanes_16(&acc), _mm512_set1_ps(scale));
        _mm512_storeu_ps(scores.as_mut_ptr().add(16 * b), sums);
    }
    for k in 16 * blocks..n {
        scores[k] = sum_lanes(product(keys.as_ptr().add(k * d))) * scale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every head width's kernels (the 64- and 128-wide registers, slices of 128, 64 and 16
    /// columns, the last columns one by one) against softmax and weighted sums in f64.
    #[test]
    fn one_head_equals_plain_softmax_attention() {
        let mut rng = crate::rng::Rng::new(7);
        for d in [8, 24, 64, 80, 128, 200, 256] {
            for n in [1, 2, 17, 40] {
                let mut values = |len: usize| -> Vec<f32> {
                    (0..len).map(|_| rng.uniform() as f32 * 2.0 - 1.0).collect()
                };
                let (q, keys, vals) = (values(d), values(n * d), values(n * d));
                let scale = (d as f32).powf(-0.5);
                let mut out = vec![0f32; d];
                attend_one_head(&q, &keys, &vals, scale, None, &mut out, &mut Vec::new());
                let scores: Vec<f64> = keys
                    .chunks(d)
                    .map(|k| {
                        scale as f64
                            * q.iter()
                                .zip(k)
                                .map(|(a, b)| *a as f64 * *b as f64)
                                .sum::<f64>()
                    })
                    .collect();
                let top = scores.iter().cloned().fold(f64::MIN, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - top).exp()).collect();
                let total: f64 = weights.iter().sum();
                for j in 0..d {
                    let expected: f64 = weights
                        .iter()
                        .zip(vals.chunks(d))
                        .map(|(w, v)| w / total * v[j] as f64)
                        .sum();
                    assert!(
                        (out[j] as f64 - expected).abs() < 1e-5,
                        "d {d}, {n} keys, column {j}: {} vs {expected}",
                        out[j]
                    );
                }
            }
        }
    }
}
