//! `x W` for a few rows of `x` (a short sentence, a decode step) against a weight stored
//! `[in, out]` row-major, without packing.
//!
//! The `gemm` crate behind candle's matmul packs its operands into panels before multiplying,
//! which pays off when many rows reuse each panel; with 17 rows (workload (s) of the encoder
//! benchmark: one 17-token sentence through all-MiniLM-L6-v2) the forward pass is bound by
//! streaming the 42 MB of weights once, and the packing and the parallel bookkeeping around it
//! took the latency to 7.5 ms (ONNX Runtime: 4.4 ms). This kernel walks the weight in strips of
//! 64 columns, each strip read once from memory and kept in cache while every group of 6 rows
//! of `x` multiplies it into 24 AVX-512 accumulators; the strips are shared among the team's
//! threads.

/// Rows of `x` up to which [`matmul`] runs (beyond, candle's GEMM is faster).
pub const MAX_ROWS: usize = 48;

/// Columns per strip: four 16-lane registers.
const STRIP: usize = 64;
/// Rows of `x` per register block (6 x 4 accumulators + 4 weight vectors + 1 broadcast).
const ROW_BLOCK: usize = 6;

/// Whether the AVX-512 kernel runs on this CPU (AVX-512F, and BW and VL for bf16 and f16
/// weights: the strip's edges are masked 16-bit loads; [`super::avx512`]), detected once.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| super::avx512() && std::env::var_os("GIRDER_NO_SKINNY").is_none())
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether the AVX2 kernel runs on this CPU (AVX2, FMA and F16C), detected once: the path of
/// half-precision weights on CPUs without AVX-512 ([`matmul_half_avx2`]).
pub fn available_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
                && std::env::var_os("GIRDER_NO_SKINNY").is_none()
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// A weight element the kernel reads: f32, or bf16 and f16 widened to f32 in the register
/// they are loaded into (the product and its sums are f32 either way).
pub trait WeightElement: Copy + Send + Sync + 'static {
    /// Up to 16 elements at `p` (the lanes `mask` selects; the others zero) as f32 lanes.
    ///
    /// # Safety
    /// [`available`], and the selected lanes are readable.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(
        p: *const Self,
        mask: std::arch::x86_64::__mmask16,
    ) -> std::arch::x86_64::__m512;
}

impl WeightElement for f32 {
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(
        p: *const f32,
        mask: std::arch::x86_64::__mmask16,
    ) -> std::arch::x86_64::__m512 {
        std::arch::x86_64::_mm512_maskz_loadu_ps(mask, p)
    }
}

impl WeightElement for half::bf16 {
    /// A bf16 is the upper half of the f32 it rounds: widened and shifted into place.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(
        p: *const half::bf16,
        mask: std::arch::x86_64::__mmask16,
    ) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        let bits = _mm256_maskz_loadu_epi16(mask, p as *const i16);
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(bits)))
    }
}

impl WeightElement for half::f16 {
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(
        p: *const half::f16,
        mask: std::arch::x86_64::__mmask16,
    ) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, p as *const i16))
    }
}

/// A half-precision weight element the AVX2 kernel widens 8 at a time.
pub trait HalfElement: WeightElement + Into<f32> {
    /// The 8 elements at `p` as f32 lanes.
    ///
    /// # Safety
    /// [`available_avx2`], and 8 elements are readable at `p`.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
}

impl HalfElement for half::bf16 {
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const half::bf16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        let bits = _mm_loadu_si128(p as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(bits)))
    }
}

impl HalfElement for half::f16 {
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const half::f16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
}

/// `out[m, n] = x[m, k] · w[k, n]` for half-precision `w` on AVX2 (FMA, F16C): the weights
/// widened 8 at a time in the register they are loaded into, as the AVX-512 kernel does 16
/// at a time; `m <= MAX_ROWS` and [`available_avx2`].
pub fn matmul_half_avx2<W: HalfElement>(
    x: &[f32],
    w: &[W],
    m: usize,
    k: usize,
    n: usize,
) -> Vec<f32> {
    assert!(x.len() >= m * k && w.len() >= k * n && m <= MAX_ROWS);
    assert!(
        available_avx2(),
        "skinny_matmul::matmul_half_avx2 needs AVX2, FMA and F16C"
    );
    // SAFETY: `available_avx2` saw AVX2, FMA and F16C; the asserts bound every read; each
    // strip writes columns `first..first + width` of all `m` rows.
    unsafe {
        by_strips(m, n, avx2::STRIP, |first, width, out| {
            #[cfg(target_arch = "x86_64")]
            avx2::strip(x, w, m, k, n, first, width, out);
        })
    }
}

/// The `[m, n]` output of `strip(first, width, out)` run for every strip of `strip_width`
/// columns, the strips shared among the team's threads. Written straight into its final
/// place, every element once: no zero-filled buffer, no tile copied over (both were page
/// faults and copies in `perf`).
///
/// # Safety
/// `strip` writes columns `first..first + width` of every one of the `m` rows of `out`
/// (row-major, `n` columns), and nothing else.
unsafe fn by_strips(
    m: usize,
    n: usize,
    strip_width: usize,
    strip: impl Fn(usize, usize, *mut f32) + Sync,
) -> Vec<f32> {
    let mut out = Vec::<f32>::with_capacity(m * n);
    // Each task writes its own strip's columns, and no other task's.
    let shared = super::team::SharedOutput(out.as_mut_ptr());
    crate::layers::cpu::team::for_each(n.div_ceil(strip_width), |s| {
        let shared = &shared;
        let first = s * strip_width;
        strip(first, strip_width.min(n - first), shared.0);
    });
    // SAFETY: the strips covered every column of every row.
    unsafe { out.set_len(m * n) };
    out
}

/// The AVX2 kernel: strips of 32 columns (four 8-lane registers), two rows of `x` per
/// register block (8 accumulators, 4 weight vectors and a broadcast in the 16 registers), the
/// strip in chunks of [`K_CHUNK`](avx2::K_CHUNK) weight rows kept in L1 across the row
/// blocks. Columns past the last whole register of a strip (`n` not a multiple of 8) are
/// summed one at a time.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)] // indices pick registers of the accumulator block
mod avx2 {
    use super::{HalfElement, MAX_ROWS};
    use std::arch::x86_64::*;

    pub(super) const STRIP: usize = 32;
    const ROW_BLOCK: usize = 2;
    pub(super) const K_CHUNK: usize = 64;

    /// Columns `first..first + width` of every row of `out` (`[m, n]`).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn strip<W: HalfElement>(
        x: &[f32],
        w: &[W],
        m: usize,
        k: usize,
        n: usize,
        first: usize,
        width: usize,
        out: *mut f32,
    ) {
        let vectors = width / 8;
        let mut partial = [[_mm256_setzero_ps(); 4]; MAX_ROWS];
        for start in (0..k).step_by(K_CHUNK) {
            let ks = start..(start + K_CHUNK).min(k);
            let mut r = 0;
            while r < m {
                match (m - r).min(ROW_BLOCK) {
                    2 => block::<2, W>(x, w, k, n, first, vectors, r, ks.clone(), &mut partial),
                    _ => block::<1, W>(x, w, k, n, first, vectors, r, ks.clone(), &mut partial),
                }
                r += ROW_BLOCK;
            }
        }
        for (i, sums) in partial[..m].iter().enumerate() {
            let row_out = out.add(i * n + first);
            for j in 0..vectors {
                _mm256_storeu_ps(row_out.add(8 * j), sums[j]);
            }
            for c in 8 * vectors..width {
                let mut sum = 0f32;
                for kk in 0..k {
                    let weight: f32 = w[kk * n + first + c].into();
                    sum = x[i * k + kk].mul_add(weight, sum);
                }
                *row_out.add(c) = sum;
            }
        }
    }

    /// Rows `row..row + R` of `x` against weight rows `ks`, the strip's `vectors` whole
    /// registers.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block<const R: usize, W: HalfElement>(
        x: &[f32],
        w: &[W],
        k: usize,
        n: usize,
        first: usize,
        vectors: usize,
        row: usize,
        ks: std::ops::Range<usize>,
        partial: &mut [[__m256; 4]; MAX_ROWS],
    ) {
        let mut acc = [[_mm256_setzero_ps(); 4]; R];
        acc.copy_from_slice(&partial[row..row + R]);
        let xp = x.as_ptr().add(row * k);
        let wp = w.as_ptr().add(first);
        if vectors == 4 {
            for kk in ks {
                let wr = wp.add(kk * n);
                let wv = [
                    W::load8(wr),
                    W::load8(wr.add(8)),
                    W::load8(wr.add(16)),
                    W::load8(wr.add(24)),
                ];
                for i in 0..R {
                    let xb = _mm256_set1_ps(*xp.add(i * k + kk));
                    for j in 0..4 {
                        acc[i][j] = _mm256_fmadd_ps(xb, wv[j], acc[i][j]);
                    }
                }
            }
        } else {
            for kk in ks {
                let wr = wp.add(kk * n);
                for j in 0..vectors {
                    let wv = W::load8(wr.add(8 * j));
                    for i in 0..R {
                        let xb = _mm256_set1_ps(*xp.add(i * k + kk));
                        acc[i][j] = _mm256_fmadd_ps(xb, wv, acc[i][j]);
                    }
                }
            }
        }
        partial[row..row + R].copy_from_slice(&acc);
    }
}

/// `out[m, n] = x[m, k] · w[k, n]`, all row-major; `m <= MAX_ROWS` and [`available`].
pub fn matmul<W: WeightElement>(x: &[f32], w: &[W], m: usize, k: usize, n: usize) -> Vec<f32> {
    assert!(x.len() >= m * k && w.len() >= k * n && m <= MAX_ROWS);
    assert!(
        available(),
        "skinny_matmul::matmul needs AVX-512F, BW and VL"
    );
    // SAFETY: `available` saw AVX-512F, BW and VL; the asserts bound every read; each strip
    // writes columns `first..first + width` of all `m` rows.
    unsafe {
        by_strips(m, n, STRIP, |first, width, out| {
            #[cfg(target_arch = "x86_64")]
            avx512::strip(x, w, m, k, n, first, width, out);
        })
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)] // indices pick registers of the accumulator block
mod avx512 {
    use super::{WeightElement, MAX_ROWS, ROW_BLOCK};
    use std::arch::x86_64::*;

    const PREFETCH_ROWS: usize = 20;
    /// Weight rows per chunk of a strip. A chunk is multiplied into every row block before
    /// the next one is read, so its lines come from memory once and then from L1 or L2; over
    /// whole strips, the second and third row blocks of a 17-token sentence read each line
    /// again after it had left L1 (rows `n` floats apart share few L1 sets). Measured on
    /// MiniLM's shapes with 17 rows: 12-20% faster at 32, 64 or 128 rows per chunk.
    const K_CHUNK: usize = 64;

    /// Columns `first..first + width` of every row of `out` (`[m, n]`).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn strip<W: WeightElement>(
        x: &[f32],
        w: &[W],
        m: usize,
        k: usize,
        n: usize,
        first: usize,
        width: usize,
        out: *mut f32,
    ) {
        let mut masks = [0 as __mmask16; 4];
        for (j, mask) in masks.iter_mut().enumerate() {
            let lanes = width.saturating_sub(16 * j).min(16);
            *mask = ((1u32 << lanes) - 1) as __mmask16;
        }
        // The strip in chunks of K_CHUNK weight rows, each chunk multiplied into every row
        // block while it is in L1; the partial sums wait on the stack between chunks (not in
        // `out`, whose lines at a strip's edges the neighbouring strip's thread writes), so
        // every output is still one chain of multiply-adds in the order of k.
        let mut partial = [[_mm512_setzero_ps(); 4]; MAX_ROWS];
        for start in (0..k).step_by(K_CHUNK) {
            let ks = start..(start + K_CHUNK).min(k);
            let mut r = 0;
            while r < m {
                let rows = ROW_BLOCK.min(m - r);
                let at = Block {
                    row: r,
                    ks: ks.clone(),
                    masks,
                };
                match rows {
                    6 => block::<6, W>(x, w, k, n, first, &at, &mut partial),
                    5 => block::<5, W>(x, w, k, n, first, &at, &mut partial),
                    4 => block::<4, W>(x, w, k, n, first, &at, &mut partial),
                    3 => block::<3, W>(x, w, k, n, first, &at, &mut partial),
                    2 => block::<2, W>(x, w, k, n, first, &at, &mut partial),
                    _ => block::<1, W>(x, w, k, n, first, &at, &mut partial),
                }
                r += rows;
            }
        }
        for (i, sums) in partial[..m].iter().enumerate() {
            let row_out = out.add(i * n + first);
            for j in 0..4 {
                _mm512_mask_storeu_ps(row_out.wrapping_add(16 * j), masks[j], sums[j]);
            }
        }
    }

    /// Rows `row..row + R` of `x` against weight rows `ks`.
    struct Block {
        row: usize,
        ks: std::ops::Range<usize>,
        masks: [__mmask16; 4],
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block<const R: usize, W: WeightElement>(
        x: &[f32],
        w: &[W],
        k: usize,
        n: usize,
        first: usize,
        at: &Block,
        partial: &mut [[__m512; 4]; MAX_ROWS],
    ) {
        let row = at.row;
        let mut acc = [[_mm512_setzero_ps(); 4]; R];
        acc.copy_from_slice(&partial[row..row + R]);
        let xp = x.as_ptr().add(row * k);
        let wp = w.as_ptr().add(first);
        for kk in at.ks.clone() {
            let wr = wp.add(kk * n);
            if row == 0 && kk + PREFETCH_ROWS < k {
                // Strip rows lie `n` floats apart, a stride the hardware prefetcher follows
                // late: the first row block asks for the row PREFETCH_ROWS ahead now.
                // `wrapping_add`: near the end of a strip the addresses may lie past the
                // weights (a prefetch does not fault, and the masked loads below read none of
                // the lanes beyond), and `add` may not form such a pointer.
                let ahead = wr.wrapping_add(PREFETCH_ROWS * n) as *const i8;
                // A strip's row is 64 elements: as many cache lines as an element has bytes.
                for line in 0..std::mem::size_of::<W>() {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * line));
                }
            }
            let wv = [
                W::load16(wr, at.masks[0]),
                W::load16(wr.wrapping_add(16), at.masks[1]),
                W::load16(wr.wrapping_add(32), at.masks[2]),
                W::load16(wr.wrapping_add(48), at.masks[3]),
            ];
            for i in 0..R {
                let xb = _mm512_set1_ps(*xp.add(i * k + kk));
                for j in 0..4 {
                    acc[i][j] = _mm512_fmadd_ps(xb, wv[j], acc[i][j]);
                }
            }
        }
        partial[row..row + R].copy_from_slice(&acc);
    }
}

/// `x wt` (`x` `[m, k]`, `wt` `[k, n]`) through [`matmul`] when `x` has few rows and both are
/// plain f32 CPU tensors; `None` otherwise (the caller takes candle's matmul).
pub(crate) fn matmul_tensors(
    x: &candle_core::Tensor,
    wt: &candle_core::Tensor,
) -> crate::error::Result<Option<candle_core::Tensor>> {
    let plain = super::kernels::fast_path;
    let Ok((m, k)) = x.dims2() else {
        return Ok(None);
    };
    if m == 0 || m > MAX_ROWS || !available() || !plain(x) || !plain(wt) {
        return Ok(None);
    }
    let n = wt.dim(1)?;
    let out = {
        let (xs, x_layout) = x.storage_and_layout();
        let (ws, w_layout) = wt.storage_and_layout();
        let (
            candle_core::Storage::Cpu(candle_core::CpuStorage::F32(xd)),
            candle_core::Storage::Cpu(candle_core::CpuStorage::F32(wd)),
        ) = (&*xs, &*ws)
        else {
            return Ok(None);
        };
        matmul(
            &xd[x_layout.start_offset()..],
            &wd[w_layout.start_offset()..],
            m,
            k,
            n,
        )
    };
    Ok(Some(candle_core::Tensor::from_vec(
        out,
        (m, n),
        x.device(),
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_avx2_half_kernel_equals_a_plain_product() {
        if !available_avx2() {
            return;
        }
        for (m, k, n) in [
            (1, 8, 16),
            (17, 384, 384),
            (6, 5, 70),
            (3, 130, 37),
            (48, 7, 100),
        ] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7) % 13) as f32 / 13.0 - 0.5)
                .collect();
            let w: Vec<half::bf16> = (0..k * n)
                .map(|i| half::bf16::from_f32(((i * 5) % 11) as f32 / 11.0 - 0.5))
                .collect();
            let out = matmul_half_avx2(&x, &w, m, k, n);
            let wf: Vec<half::f16> = w.iter().map(|v| half::f16::from_f32(v.to_f32())).collect();
            let out_f16 = matmul_half_avx2(&x, &wf, m, k, n);
            for r in 0..m {
                for c in 0..n {
                    let expected: f32 = (0..k).map(|i| x[r * k + i] * w[i * n + c].to_f32()).sum();
                    for got in [out[r * n + c], out_f16[r * n + c]] {
                        assert!(
                            (got - expected).abs() < 1e-3,
                            "{m}x{k}x{n} [{r},{c}]: {got} vs {expected}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn equals_a_plain_product() {
        if !available() {
            return;
        }
        for (m, k, n) in [
            (1, 8, 16),
            (17, 384, 384),
            (6, 5, 70),
            (13, 32, 1536),
            (48, 7, 100),
        ] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7) % 13) as f32 / 13.0 - 0.5)
                .collect();
            let w: Vec<f32> = (0..k * n)
                .map(|i| ((i * 5) % 11) as f32 / 11.0 - 0.5)
                .collect();
            let out = matmul(&x, &w, m, k, n);
            for r in 0..m {
                for c in 0..n {
                    let expected: f32 = (0..k).map(|i| x[r * k + i] * w[i * n + c]).sum();
                    let got = out[r * n + c];
                    assert!(
                        (got - expected).abs() < 1e-4,
                        "{m}x{k}x{n} [{r},{c}]: {got} vs {expected}"
                    );
                }
            }
        }
    }
}
