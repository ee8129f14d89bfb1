//! A Q4_1 or Q8_0 matrix times activations rounded to 8 bits, as llama.cpp multiplies them.
//!
//! candle 0.11 multiplies Q4_1 with a scalar loop (`BlockQ4_1::vec_dot` calls its
//! `vec_dot_unopt`), about 30 times slower than llama.cpp for SmolLM2's Q4_1 file. This
//! kernel reads the weight blocks as stored (Q4_1: 20 bytes per 32 weights, f16 scale `d`,
//! f16 minimum `m`, 16 bytes of nibbles, weight `j` is `d · q_j + m`; Q8_0: 34 bytes, f16 `d`
//! and 32 signed bytes, weight `j` is `d · q_j`) and rounds each block of 32 activations to
//! signed bytes with its own scale (`x ≈ e · a`, ggml's `block_q8_1`), so that a block's dot
//! product is integer arithmetic:
//!
//! `Σ_j x_j (d q_j + m) ≈ d e Σ_j q_j a_j + m e Σ_j a_j`
//!
//! Why round the activations: with f32 activations each weight had to be widened to f32 and
//! multiplied one lane per weight; with bytes, AVX-512 VNNI's `vpdpbusd` multiplies and sums
//! 64 weight-activation pairs in one instruction (AVX2's `vpmaddubsw` 32), which took SmolLM2's
//! batch-1 decoding from 0.67x to about llama.cpp's speed (README, Performance). The cost is
//! the rounding: the logits move by a few percent against the dequantized model's (the f32 path,
//! `GgufMode::Dequantized`, stays exact), the same approximation llama.cpp makes.
//!
//! AVX-512 VNNI or AVX2, detected at run time (builds stay portable: no `target-cpu=native`),
//! a scalar loop otherwise; weight rows are split across rayon's threads, and each weight row
//! is unpacked once for all the activation rows, eight at a time while it sits in L1.
//!
//! Prompts (many rows) go through the same kernel. Dequantizing the matrix for one f32 GEMM
//! prefilled 128 tokens 30% faster (232 vs 177 tokens/s), but it materialises every matrix
//! as f32 on every call: 538 MB of transient memory for SmolLM2, which under a server's
//! continuous batching (a step with two new prompts) cost more than it saved (perf: page
//! clearing and transposes) and grew the resident set by 40%.

use crate::error::Result;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rayon::prelude::*;

const BLOCK: usize = 32;

/// The block formats the kernel reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// f16 d, f16 m, 16 bytes of nibbles (low nibble: element j, high: j + 16).
    Q4_1,
    /// f16 d, 32 signed bytes.
    Q8_0,
}

impl Format {
    fn block_bytes(self) -> usize {
        match self {
            Format::Q4_1 => 20,
            Format::Q8_0 => 34,
        }
    }
}

/// Activation rows one pass of the kernel multiplies (its accumulators stay in registers).
const ROWS_PER_PASS: usize = 8;

/// A `[rows, cols]` Q4_1 or Q8_0 matrix, its blocks row by row.
#[derive(Debug, Clone)]
pub struct QuantMatrix {
    rows: usize,
    cols: usize,
    format: Format,
    data: std::sync::Arc<Vec<u8>>,
    tensor: std::sync::Arc<QTensor>,
}

/// Activation rows rounded block by block to signed bytes: `x_j ≈ scale · q_j`.
struct ByteActivations {
    blocks: usize,
    /// `[rows, blocks · 32]`.
    q: Vec<i8>,
    /// `[rows, blocks, 8]`: each block's scale, repeated for the 8 i32 lanes its dot product
    /// lands in, so a 512-bit kernel loads two blocks' scales with one instruction.
    scales: Vec<f32>,
    /// `[rows, blocks]`: `scale · Σ q` (the Q4_1 minimum's term).
    sums: Vec<f32>,
    /// `[rows, blocks, 8]`: the same over 8, once per lane, so that a 512-bit multiply-add of
    /// the blocks' minimums adds each minimum's term once after the lanes are summed.
    lane_sums: Vec<f32>,
}

impl ByteActivations {
    fn quantize(xs: &[f32], cols: usize) -> Self {
        let blocks = cols / BLOCK;
        let total = xs.len() / BLOCK;
        let mut acts = ByteActivations {
            blocks,
            q: vec![0i8; xs.len()],
            scales: vec![0f32; total * 8],
            sums: vec![0f32; total],
            lane_sums: vec![0f32; total * 8],
        };
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f")]
            unsafe fn avx512(xs: &[f32], acts: &mut ByteActivations) {
                quantize_blocks(xs, acts)
            }
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2(xs: &[f32], acts: &mut ByteActivations) {
                quantize_blocks(xs, acts)
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has the features the function was compiled for.
                unsafe { avx512(xs, &mut acts) };
                return acts;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: as above.
                unsafe { avx2(xs, &mut acts) };
                return acts;
            }
        }
        quantize_blocks(xs, &mut acts);
        acts
    }

    fn row(&self, i: usize) -> ActivationRow<'_> {
        let b = self.blocks;
        ActivationRow {
            q: &self.q[i * b * BLOCK..(i + 1) * b * BLOCK],
            scales: &self.scales[i * b * 8..(i + 1) * b * 8],
            sums: &self.sums[i * b..(i + 1) * b],
        }
    }
}

/// Rounds each block of 32 of `xs` into `acts` (compiled once per instruction set, so that
/// the rounding is one instruction instead of a libm call per value).
#[inline(always)]
fn quantize_blocks(xs: &[f32], acts: &mut ByteActivations) {
    for (b, (x, qb)) in xs
        .chunks_exact(BLOCK)
        .zip(acts.q.chunks_exact_mut(BLOCK))
        .enumerate()
    {
        let x: &[f32; BLOCK] = x.try_into().expect("a block");
        let mut amax = 0f32;
        for v in x {
            amax = amax.max(v.abs());
        }
        let scale = amax / 127.0;
        let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in qb.iter_mut().zip(x) {
            // Ties to even, as llama.cpp's SIMD `quantize_row_q8_1` (`_mm256_round_ps`).
            *q = (v * inverse).round_ties_even() as i8;
            sum += *q as i32;
        }
        acts.scales[b * 8..b * 8 + 8].fill(scale);
        acts.sums[b] = scale * sum as f32;
        acts.lane_sums[b * 8..b * 8 + 8].fill(scale * sum as f32 / 8.0);
    }
}

/// One row of [`ByteActivations`].
#[derive(Clone, Copy)]
struct ActivationRow<'a> {
    q: &'a [i8],
    scales: &'a [f32],
    sums: &'a [f32],
}

impl QuantMatrix {
    /// The matrix of a Q4_1 or Q8_0 `QTensor` `[rows, cols]`; `None` for any other type.
    pub fn from_qtensor(t: &std::sync::Arc<QTensor>) -> Result<Option<Self>> {
        let format = match t.dtype() {
            GgmlDType::Q4_1 => Format::Q4_1,
            GgmlDType::Q8_0 => Format::Q8_0,
            _ => return Ok(None),
        };
        let (rows, cols) = t.shape().dims2()?;
        let data = t.data()?.into_owned();
        if !cols.is_multiple_of(BLOCK) || data.len() != rows * cols / BLOCK * format.block_bytes() {
            return Ok(None);
        }
        Ok(Some(QuantMatrix {
            rows,
            cols,
            format,
            data: std::sync::Arc::new(data),
            tensor: t.clone(),
        }))
    }

    /// The quantized tensor the matrix was read from.
    pub fn qtensor(&self) -> &std::sync::Arc<QTensor> {
        &self.tensor
    }

    /// `x`: `[n, cols]` f32 → `x Wᵀ`: `[n, rows]` f32.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, cols) = x.dims2()?;
        if cols != self.cols {
            return Err(candle_core::Error::ShapeMismatchBinaryOp {
                lhs: x.shape().clone(),
                rhs: (self.rows, self.cols).into(),
                op: "quantized matmul",
            }
            .into());
        }
        let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let passes: Vec<ByteActivations> = xs
            .chunks(ROWS_PER_PASS * cols)
            .map(|rows| ByteActivations::quantize(rows, cols))
            .collect();
        let row_bytes = cols / BLOCK * self.format.block_bytes();
        let (format, kernel) = (self.format, Kernel::detect());
        let mut out = vec![0f32; n * self.rows];
        // Output laid out [rows, n] while computing (each thread owns whole weight rows and
        // unpacks each once for all n activation rows), transposed at the end.
        let chunk_rows = 16;
        out.par_chunks_mut(chunk_rows * n)
            .enumerate()
            .for_each(|(c, dst)| {
                let first = c * chunk_rows;
                for (r, dst_row) in dst.chunks_mut(n).enumerate() {
                    let w = &self.data[(first + r) * row_bytes..(first + r + 1) * row_bytes];
                    for (acts, dst) in passes.iter().zip(dst_row.chunks_mut(ROWS_PER_PASS)) {
                        weight_row(kernel, format, w, acts, dst);
                    }
                }
            });
        let t = Tensor::from_vec(out, (self.rows, n), &Device::Cpu)?;
        Ok(if n == 1 {
            t.reshape((1, self.rows))?
        } else {
            t.t()?.contiguous()?
        })
    }
}

/// The matrices stacked row after row (they share their column count and block type): GGUF
/// stores a matrix's blocks row by row, so the stacked matrix is their bytes in order.
pub fn concat_rows(parts: &[std::sync::Arc<QTensor>]) -> Result<QTensor> {
    let first = parts
        .first()
        .ok_or_else(|| candle_core::Error::Msg("no matrices to stack".into()))?;
    let (dtype, (_, cols)) = (first.dtype(), first.shape().dims2()?);
    let mut bytes = Vec::new();
    let mut rows = 0;
    for p in parts {
        let (r, c) = p.shape().dims2()?;
        if c != cols || p.dtype() != dtype {
            return Err(candle_core::Error::Msg(format!(
                "cannot stack a {:?} [{r}, {c}] matrix under a {dtype:?} one of {cols} columns",
                p.dtype()
            ))
            .into());
        }
        bytes.extend_from_slice(&p.data()?);
        rows += r;
    }
    Ok(candle_core::quantized::ggml_file::qtensor_from_ggml(
        dtype,
        &bytes,
        vec![rows, cols],
        &Device::Cpu,
    )?)
}

/// The widest kernel this CPU runs, detected once at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    /// AVX-512 BW + VNNI: two blocks per instruction (`vpdpbusd`, 64 byte products).
    Vnni512,
    /// AVX2 + FMA + F16C: one block per `vpmaddubsw` (32 byte products into i16 pairs).
    Avx2,
    Scalar,
}

impl Kernel {
    fn detect() -> Kernel {
        static KERNEL: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *KERNEL.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                use std::arch::is_x86_feature_detected as has;
                // GIRDER_NO_AVX512=1 forces the AVX2 kernel, to compare the two.
                if std::env::var_os("GIRDER_NO_AVX512").is_none()
                    && has!("avx512f")
                    && has!("avx512bw")
                    && has!("avx512dq")
                    && has!("avx512vnni")
                    && has!("f16c")
                {
                    return Kernel::Vnni512;
                }
                if has!("avx2") && has!("fma") && has!("f16c") {
                    return Kernel::Avx2;
                }
            }
            Kernel::Scalar
        })
    }
}

/// `out[i] = w · x_i` for every activation row `i` (`out.len()` of them, at most
/// [`ROWS_PER_PASS`]).
fn weight_row(kernel: Kernel, format: Format, w: &[u8], acts: &ByteActivations, out: &mut [f32]) {
    assert!(out.len() <= ROWS_PER_PASS && acts.q.len() >= out.len() * acts.blocks * BLOCK);
    assert!(w.len() >= acts.blocks * format.block_bytes());
    #[cfg(target_arch = "x86_64")]
    {
        const _: () = assert!(ROWS_PER_PASS == 8);
        macro_rules! by_rows {
            ($m:ident :: $f:ident) => {
                match out.len() {
                    1 => $m::$f::<1>(w, acts, out),
                    2 => $m::$f::<2>(w, acts, out),
                    3 => $m::$f::<3>(w, acts, out),
                    4 => $m::$f::<4>(w, acts, out),
                    5 => $m::$f::<5>(w, acts, out),
                    6 => $m::$f::<6>(w, acts, out),
                    7 => $m::$f::<7>(w, acts, out),
                    _ => $m::$f::<8>(w, acts, out),
                }
            };
        }
        // SAFETY: Kernel::detect saw the features each kernel enables; the asserts above
        // bound every pointer the kernels read.
        unsafe {
            match (kernel, format) {
                (Kernel::Vnni512, Format::Q4_1) => return by_rows!(vnni512::q4_1),
                (Kernel::Vnni512, Format::Q8_0) => return by_rows!(vnni512::q8_0),
                (Kernel::Avx2, Format::Q4_1) => return by_rows!(avx2::q4_1),
                (Kernel::Avx2, Format::Q8_0) => return by_rows!(avx2::q8_0),
                (Kernel::Scalar, _) => {}
            }
        }
    }
    let _ = kernel;
    for (i, o) in out.iter_mut().enumerate() {
        *o = match format {
            Format::Q4_1 => q4_1_scalar(w, acts.row(i)),
            Format::Q8_0 => q8_0_scalar(w, acts.row(i)),
        };
    }
}

fn f16_at(block: &[u8], offset: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([block[offset], block[offset + 1]]))
}

/// The reference the SIMD kernels are tested against (and the kernel of other CPUs).
fn q4_1_scalar(w: &[u8], a: ActivationRow) -> f32 {
    let mut total = 0f32;
    for (b, block) in w.chunks_exact(20).take(a.sums.len()).enumerate() {
        let (d, m) = (f16_at(block, 0), f16_at(block, 2));
        let aq = &a.q[b * BLOCK..(b + 1) * BLOCK];
        let mut dot = 0i32;
        for (j, &q) in block[4..].iter().enumerate() {
            dot += (q & 0x0f) as i32 * aq[j] as i32 + (q >> 4) as i32 * aq[j + 16] as i32;
        }
        total += d * a.scales[b * 8] * dot as f32 + m * a.sums[b];
    }
    total
}

fn q8_0_scalar(w: &[u8], a: ActivationRow) -> f32 {
    let mut total = 0f32;
    for (b, block) in w.chunks_exact(34).take(a.sums.len()).enumerate() {
        let aq = &a.q[b * BLOCK..(b + 1) * BLOCK];
        let dot: i32 = block[2..]
            .iter()
            .zip(aq)
            .map(|(&q, &x)| q as i8 as i32 * x as i32)
            .sum();
        total += f16_at(block, 0) * a.scales[b * 8] * dot as f32;
    }
    total
}

/// Two blocks per step: the weights' bytes in one 512-bit register, each activation row's
/// 64 bytes multiplied and summed four by four into 16 i32 lanes (8 per block) by one
/// `vpdpbusd`, converted to f32 and scaled by the two blocks' `d · e` in one multiply-add.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)] // `i` picks an accumulator and an activation row's offset
mod vnni512 {
    use super::{ByteActivations, BLOCK};
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn f16x2(p: *const u8) -> __m128 {
        _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(p as *const i32)))
    }

    /// `[a × 8, b × 8]`
    #[inline(always)]
    unsafe fn halves(a: f32, b: f32) -> __m512 {
        _mm512_insertf32x8(_mm512_set1_ps(a), _mm256_set1_ps(b), 1)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vnni,f16c")]
    pub(super) unsafe fn q4_1<const N: usize>(w: &[u8], a: &ByteActivations, out: &mut [f32]) {
        let blocks = a.blocks;
        let cols = blocks * BLOCK;
        let mask = _mm256_set1_epi8(0x0f);
        let mut acc = [_mm512_setzero_ps(); N];
        let mut m_acc = [_mm512_setzero_ps(); N];
        let pairs = blocks / 2;
        for pair in 0..pairs {
            let b = 2 * pair;
            let p0 = w.as_ptr().add(b * 20);
            let p1 = p0.add(20);
            let (dm0, dm1) = (f16x2(p0), f16x2(p1));
            let (d0, m0) = (_mm_cvtss_f32(dm0), _mm_cvtss_f32(_mm_movehdup_ps(dm0)));
            let (d1, m1) = (_mm_cvtss_f32(dm1), _mm_cvtss_f32(_mm_movehdup_ps(dm1)));
            let nibbles = _mm256_set_m128i(
                _mm_loadu_si128(p1.add(4) as *const __m128i),
                _mm_loadu_si128(p0.add(4) as *const __m128i),
            );
            let lo = _mm256_and_si256(nibbles, mask); // [0..16 of b, 0..16 of b+1]
            let hi = _mm256_and_si256(_mm256_srli_epi16(nibbles, 4), mask); // [16..32, 16..32]
            let lanes = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
            // 128-bit lanes [lo b, lo b+1, hi b, hi b+1] → [lo b, hi b, lo b+1, hi b+1]
            let q = _mm512_shuffle_i64x2(lanes, lanes, 0b11_01_10_00);
            let (d, m) = (halves(d0, d1), halves(m0, m1));
            for i in 0..N {
                let row = i * blocks + b;
                let x = _mm512_loadu_si512(a.q.as_ptr().add(row * BLOCK) as *const _);
                let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, x);
                let scale = _mm512_mul_ps(d, _mm512_loadu_ps(a.scales.as_ptr().add(row * 8)));
                acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc[i]);
                m_acc[i] = _mm512_fmadd_ps(
                    m,
                    _mm512_loadu_ps(a.lane_sums.as_ptr().add(row * 8)),
                    m_acc[i],
                );
            }
        }
        for (i, o) in out.iter_mut().enumerate().take(N) {
            *o = _mm512_reduce_add_ps(_mm512_add_ps(acc[i], m_acc[i]));
        }
        if blocks % 2 == 1 {
            let b = blocks - 1;
            for (i, o) in out.iter_mut().enumerate().take(N) {
                let row = a.row(i);
                let tail = super::ActivationRow {
                    q: &row.q[b * BLOCK..cols],
                    scales: &row.scales[b * 8..],
                    sums: &row.sums[b..],
                };
                *o += super::q4_1_scalar(&w[b * 20..], tail);
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vnni,f16c")]
    pub(super) unsafe fn q8_0<const N: usize>(w: &[u8], a: &ByteActivations, out: &mut [f32]) {
        let blocks = a.blocks;
        let cols = blocks * BLOCK;
        let zero = _mm512_setzero_si512();
        let mut acc = [_mm512_setzero_ps(); N];
        for pair in 0..blocks / 2 {
            let b = 2 * pair;
            let p0 = w.as_ptr().add(b * 34);
            let p1 = p0.add(34);
            let d0 = _mm_cvtss_f32(f16x2(p0));
            let d1 = _mm_cvtss_f32(f16x2(p1));
            let q = _mm512_inserti64x4(
                _mm512_castsi256_si512(_mm256_loadu_si256(p0.add(2) as *const __m256i)),
                _mm256_loadu_si256(p1.add(2) as *const __m256i),
                1,
            );
            // vpdpbusd multiplies unsigned by signed bytes: |w| times x with w's sign.
            let magnitude = _mm512_abs_epi8(q);
            let negative = _mm512_movepi8_mask(q);
            let d = halves(d0, d1);
            for i in 0..N {
                let row = i * blocks + b;
                let x = _mm512_loadu_si512(a.q.as_ptr().add(row * BLOCK) as *const _);
                let signed = _mm512_mask_sub_epi8(x, negative, zero, x);
                let dot = _mm512_dpbusd_epi32(zero, magnitude, signed);
                let scale = _mm512_mul_ps(d, _mm512_loadu_ps(a.scales.as_ptr().add(row * 8)));
                acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc[i]);
            }
        }
        for (i, o) in out.iter_mut().enumerate().take(N) {
            *o = _mm512_reduce_add_ps(acc[i]);
        }
        if blocks % 2 == 1 {
            let b = blocks - 1;
            for (i, o) in out.iter_mut().enumerate().take(N) {
                let row = a.row(i);
                let tail = super::ActivationRow {
                    q: &row.q[b * BLOCK..cols],
                    scales: &row.scales[b * 8..],
                    sums: &row.sums[b..],
                };
                *o += super::q8_0_scalar(&w[b * 34..], tail);
            }
        }
    }
}

/// One block per step: `vpmaddubsw` multiplies the weights' unsigned bytes by the
/// activations' signed ones and adds pairs into i16 (at most 2 · 15 · 127 or 2 · 127 · 127,
/// no saturation), `vpmaddwd` by ones widens to i32.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)] // `i` picks an accumulator and an activation row's offset
mod avx2 {
    use super::{ByteActivations, BLOCK};
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q4_1<const N: usize>(w: &[u8], a: &ByteActivations, out: &mut [f32]) {
        let blocks = a.blocks;
        let mask = _mm_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); N];
        let mut m_terms = [0f32; N];
        for b in 0..blocks {
            let p = w.as_ptr().add(b * 20);
            let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(p as *const i32)));
            let (d, m) = (_mm_cvtss_f32(dm), _mm_cvtss_f32(_mm_movehdup_ps(dm)));
            let nibbles = _mm_loadu_si128(p.add(4) as *const __m128i);
            let q = _mm256_set_m128i(
                _mm_and_si128(_mm_srli_epi16(nibbles, 4), mask),
                _mm_and_si128(nibbles, mask),
            );
            for i in 0..N {
                let row = i * blocks + b;
                let x = _mm256_loadu_si256(a.q.as_ptr().add(row * BLOCK) as *const __m256i);
                let dot = _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), ones);
                let scale = _mm256_set1_ps(d * *a.scales.get_unchecked(row * 8));
                acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc[i]);
                m_terms[i] += m * *a.sums.get_unchecked(row);
            }
        }
        for (i, o) in out.iter_mut().enumerate().take(N) {
            *o = hsum(acc[i]) + m_terms[i];
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q8_0<const N: usize>(w: &[u8], a: &ByteActivations, out: &mut [f32]) {
        let blocks = a.blocks;
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); N];
        for b in 0..blocks {
            let p = w.as_ptr().add(b * 34);
            let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(
                p as *const u16,
            ) as i32)));
            let q = _mm256_loadu_si256(p.add(2) as *const __m256i);
            let magnitude = _mm256_sign_epi8(q, q);
            for i in 0..N {
                let row = i * blocks + b;
                let x = _mm256_loadu_si256(a.q.as_ptr().add(row * BLOCK) as *const __m256i);
                let signed = _mm256_sign_epi8(x, q);
                let dot = _mm256_madd_epi16(_mm256_maddubs_epi16(magnitude, signed), ones);
                let scale = _mm256_set1_ps(d * *a.scales.get_unchecked(row * 8));
                acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc[i]);
            }
        }
        for (i, o) in out.iter_mut().enumerate().take(N) {
            *o = hsum(acc[i]);
        }
    }
}

fn f16_to_f32(bits: u16) -> f32 {
    let sign = ((bits >> 15) as u32) << 31;
    let exp = ((bits >> 10) & 0x1f) as u32;
    let frac = (bits & 0x3ff) as u32;
    let magnitude = match exp {
        0 => {
            let v = frac as f32 * 2f32.powi(-24);
            return if sign != 0 { -v } else { v };
        }
        0x1f => 0x7f80_0000 | (frac << 13),
        _ => ((exp + 112) << 23) | (frac << 13),
    };
    f32::from_bits(sign | magnitude)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::max_diff;

    /// `x` with every block replaced by what the kernel multiplies: `scale · q`.
    fn rounded(x: &Tensor) -> Tensor {
        let (n, cols) = x.dims2().unwrap();
        let a = ByteActivations::quantize(&x.flatten_all().unwrap().to_vec1().unwrap(), cols);
        let back: Vec<f32> =
            a.q.iter()
                .enumerate()
                .map(|(j, &q)| q as f32 * a.scales[j / BLOCK * 8])
                .collect();
        Tensor::from_vec(back, (n, cols), &Device::Cpu).unwrap()
    }

    /// Every kernel this CPU has, and the scalar one, against the dequantized weights times
    /// the rounded activations (the same products, summed in another order), for 1 to 8
    /// rows (one pass of the kernel), and 12, 21 and 70 (passes of 8), with an even and an
    /// odd block count.
    fn check(format: GgmlDType) {
        let dev = Device::Cpu;
        for cols in [96, 128] {
            let w = Tensor::randn(0f32, 1.0, (40, cols), &dev).unwrap();
            let q = std::sync::Arc::new(QTensor::quantize(&w, format).unwrap());
            let m = QuantMatrix::from_qtensor(&q).unwrap().unwrap();
            let dense = q.dequantize(&dev).unwrap();
            for n in [1, 2, 3, 5, 8, 12, 21, 70] {
                let x = Tensor::randn(0f32, 1.0, (n, cols), &dev).unwrap();
                let y = m.forward(&x).unwrap();
                let exact = x.matmul(&dense.t().unwrap()).unwrap();
                let same_products = rounded(&x).matmul(&dense.t().unwrap()).unwrap();
                let diff = max_diff(&y, &same_products);
                assert!(diff < 1e-4, "{format:?} {cols} cols {n} rows: {diff}");
                // The rounding itself: each activation moves by at most half a step.
                let rounding = max_diff(&y, &exact);
                assert!(
                    rounding < 0.05 * (cols as f32).sqrt(),
                    "{format:?}: {rounding}"
                );
                if n > ROWS_PER_PASS {
                    continue;
                }
                let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
                let acts = ByteActivations::quantize(&xs, cols);
                let row_bytes = cols / BLOCK * m.format.block_bytes();
                let mut scalar = vec![0f32; n];
                weight_row(
                    Kernel::Scalar,
                    m.format,
                    &m.data[..row_bytes],
                    &acts,
                    &mut scalar,
                );
                let mut fast = vec![0f32; n];
                weight_row(
                    Kernel::detect(),
                    m.format,
                    &m.data[..row_bytes],
                    &acts,
                    &mut fast,
                );
                for (s, f) in scalar.iter().zip(&fast) {
                    assert!((s - f).abs() < 1e-4, "{format:?} {n}: scalar {s} vs {f}");
                }
            }
        }
    }

    #[test]
    fn q4_1_equals_dequantized_matmul() {
        check(GgmlDType::Q4_1);
    }

    #[test]
    fn q8_0_equals_dequantized_matmul() {
        check(GgmlDType::Q8_0);
    }

    #[test]
    fn rounding_keeps_zero_blocks_and_extremes() {
        let mut xs = vec![0f32; 64];
        xs[32] = -3.0;
        xs[33] = 1.5;
        let a = ByteActivations::quantize(&xs, 64);
        assert!(a.q[..32].iter().all(|&q| q == 0) && a.scales[0] == 0.0);
        assert_eq!((a.q[32], a.q[33]), (-127, 64));
        assert_eq!(a.sums[1], a.scales[8] * (-127 + 64) as f32);
    }

    #[test]
    fn f16_conversion() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x0000), 0.0);
    }
}
