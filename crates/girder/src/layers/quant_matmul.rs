//! A Q4_1 or Q8_0 matrix times f32 activations, without dequantizing the matrix.
//!
//! candle 0.11 multiplies Q4_1 with a scalar loop (`BlockQ4_1::vec_dot` calls its
//! `vec_dot_unopt`), about 30 times slower than llama.cpp for SmolLM2's Q4_1 file. This
//! kernel reads the blocks as stored (20 bytes per 32 weights: f16 scale `d`, f16 minimum `m`,
//! 16 bytes of nibbles; weight `j` is `d · q_j + m`, ggml's `block_q4_1`) and computes
//! `Σ_j x_j (d q_j + m) = d Σ_j q_j x_j + m Σ_j x_j` with the activations kept in f32, so it
//! computes what the dequantized f32 path computes, up to summation order (ggml instead
//! rounds the activations to Q8_1 first). Q8_0 (`d · q_j`, 34-byte blocks; SmolLM2's tied
//! embedding) goes through the same scheme so that the whole quantized model computes with
//! f32 activations. AVX-512 (several activation rows) or AVX2 + FMA + F16C when the CPU has
//! them, detected at run time, a scalar loop otherwise; output rows are split across rayon's threads. It serves decoding (a few
//! rows of activations, where reading the weights is the cost); a prefill of more than
//! [`MAX_KERNEL_ROWS`] rows dequantizes the matrix and runs one f32 GEMM instead.

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
/// Above this many activation rows, dequantize + GEMM beats the per-row kernel.
pub const MAX_KERNEL_ROWS: usize = 8;

/// A `[rows, cols]` Q4_1 matrix, its blocks row by row.
#[derive(Debug, Clone)]
pub struct QuantMatrix {
    rows: usize,
    cols: usize,
    format: Format,
    data: std::sync::Arc<Vec<u8>>,
    tensor: std::sync::Arc<QTensor>,
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

    /// `x`: `[n, cols]` f32 → `x Wᵀ`: `[n, rows]` f32.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, cols) = x.dims2()?;
        if cols != self.cols {
            return Err(candle_core::Error::ShapeMismatchBinaryOp {
                lhs: x.shape().clone(),
                rhs: (self.rows, self.cols).into(),
                op: "q4_1 matmul",
            }
            .into());
        }
        if n > MAX_KERNEL_ROWS {
            let w = self.tensor.dequantize(x.device())?;
            return Ok(x.matmul(&w.t()?)?);
        }
        let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let blocks = cols / BLOCK;
        // Σ x over each block of each activation row, for the `m` term.
        let block_sums: Vec<f32> = xs.chunks(BLOCK).map(|b| b.iter().sum()).collect();
        let row_bytes = blocks * self.format.block_bytes();
        let format = self.format;
        let kernel = Kernel::detect();
        let mut out = vec![0f32; n * self.rows];
        // Output laid out [rows, n] while computing (each thread owns whole weight rows),
        // transposed at the end.
        let chunk_rows = 16;
        out.par_chunks_mut(chunk_rows * n)
            .enumerate()
            .for_each(|(c, dst)| {
                let first = c * chunk_rows;
                for (r, dst_row) in dst.chunks_mut(n).enumerate() {
                    let w = &self.data[(first + r) * row_bytes..(first + r + 1) * row_bytes];
                    #[cfg(target_arch = "x86_64")]
                    if kernel == Kernel::Avx512 && n > 1 {
                        // SAFETY: Kernel::detect saw avx512f and f16c.
                        unsafe { avx512::row(format, w, &xs, cols, &block_sums, dst_row) };
                        continue;
                    }
                    for (i, d) in dst_row.iter_mut().enumerate() {
                        let x = &xs[i * cols..(i + 1) * cols];
                        let s = &block_sums[i * blocks..(i + 1) * blocks];
                        *d = match format {
                            Format::Q4_1 => dot(kernel, w, x, s),
                            Format::Q8_0 => dot_q8_0(kernel, w, x),
                        };
                    }
                }
            });
        let t = Tensor::from_vec(out, (self.rows, n), &Device::Cpu)?;
        Ok(t.t()?.contiguous()?)
    }
}

/// The widest kernel this CPU runs, detected once at run time (builds stay portable: no
/// `target-cpu=native`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    /// AVX-512F + F16C: a weight row against all activation rows at once, 16 lanes, for
    /// two or more rows (batched decoding). A single row goes through the AVX2 dot product:
    /// measured on this project's machine (`GIRDER_NO_AVX512=1` forces AVX2 for the
    /// comparison), the 512-bit kernel was slower at one row and over twice as fast at eight.
    Avx512,
    /// AVX2 + FMA + F16C: one dot product at a time, 8 lanes.
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
                if std::env::var_os("GIRDER_NO_AVX512").is_none() && has!("avx512f") && has!("f16c")
                {
                    return Kernel::Avx512;
                }
                if has!("avx2") && has!("fma") && has!("f16c") {
                    return Kernel::Avx2;
                }
            }
            Kernel::Scalar
        })
    }
}

fn dot(kernel: Kernel, w: &[u8], x: &[f32], block_sums: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if kernel != Kernel::Scalar {
        // SAFETY: Kernel::detect saw avx2, fma and f16c (AVX-512 CPUs have them too).
        return unsafe { dot_avx2(w, x, block_sums) };
    }
    let _ = kernel;
    dot_scalar(w, x, block_sums)
}

fn dot_q8_0(kernel: Kernel, w: &[u8], x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if kernel != Kernel::Scalar {
        // SAFETY: as in `dot`.
        return unsafe { dot_q8_0_avx2(w, x) };
    }
    let _ = kernel;
    dot_q8_0_scalar(w, x)
}

/// One weight row against every activation row: each block is unpacked to f32 once, scaled
/// by its `d` (exact: an f16 times a 4- or 8-bit integer fits f32's mantissa), and multiplied
/// into `N` accumulators, so a batch of decode steps reads and unpacks the weights once.
/// `N` is a constant so the accumulators stay in registers.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Format, BLOCK, MAX_KERNEL_ROWS};
    use std::arch::x86_64::*;

    /// `out[i] = w · x_i` for the `out.len()` (1..=MAX_KERNEL_ROWS) rows of `xs`.
    ///
    /// # Safety
    /// The CPU must have AVX-512F and F16C.
    #[target_feature(enable = "avx512f,f16c")]
    pub(super) unsafe fn row(
        format: Format,
        w: &[u8],
        xs: &[f32],
        cols: usize,
        block_sums: &[f32],
        out: &mut [f32],
    ) {
        const _: () = assert!(MAX_KERNEL_ROWS == 8);
        macro_rules! go {
            ($n:literal) => {
                match format {
                    Format::Q4_1 => q4_1::<$n>(w, xs, cols, block_sums, out),
                    Format::Q8_0 => q8_0::<$n>(w, xs, cols, out),
                }
            };
        }
        match out.len() {
            1 => go!(1),
            2 => go!(2),
            3 => go!(3),
            4 => go!(4),
            5 => go!(5),
            6 => go!(6),
            7 => go!(7),
            _ => go!(8),
        }
    }

    #[inline(always)]
    unsafe fn f16_pair(p: *const u8) -> (f32, f32) {
        let v = _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(p as *const i32)));
        (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_shuffle_ps(v, v, 1)))
    }

    #[target_feature(enable = "avx512f,f16c")]
    unsafe fn q4_1<const N: usize>(
        w: &[u8],
        xs: &[f32],
        cols: usize,
        block_sums: &[f32],
        out: &mut [f32],
    ) {
        let blocks = cols / BLOCK;
        assert!(w.len() >= blocks * 20 && xs.len() >= N * cols && out.len() >= N);
        assert!(block_sums.len() >= N * blocks);
        let mask = _mm_set1_epi8(0x0f);
        // Two accumulators per row: the low and high halves of a block are independent
        // chains, so the FMAs overlap.
        let mut lo_acc = [_mm512_setzero_ps(); N];
        let mut hi_acc = [_mm512_setzero_ps(); N];
        let mut m_terms = [0f32; N];
        for b in 0..blocks {
            let p = w.as_ptr().add(b * 20);
            let (d, m) = f16_pair(p);
            let qs = _mm_loadu_si128(p.add(4) as *const __m128i);
            let dv = _mm512_set1_ps(d);
            // [d q_0 .. d q_15], [d q_16 .. d q_31]
            let w_lo = _mm512_mul_ps(
                dv,
                _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(qs, mask))),
            );
            let w_hi = _mm512_mul_ps(
                dv,
                _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(
                    _mm_srli_epi16(qs, 4),
                    mask,
                ))),
            );
            for i in 0..N {
                let xp = xs.as_ptr().add(i * cols + b * BLOCK);
                lo_acc[i] = _mm512_fmadd_ps(w_lo, _mm512_loadu_ps(xp), lo_acc[i]);
                hi_acc[i] = _mm512_fmadd_ps(w_hi, _mm512_loadu_ps(xp.add(16)), hi_acc[i]);
                m_terms[i] += m * block_sums[i * blocks + b];
            }
        }
        for i in 0..N {
            out[i] = _mm512_reduce_add_ps(_mm512_add_ps(lo_acc[i], hi_acc[i])) + m_terms[i];
        }
    }

    #[target_feature(enable = "avx512f,f16c")]
    unsafe fn q8_0<const N: usize>(w: &[u8], xs: &[f32], cols: usize, out: &mut [f32]) {
        let blocks = cols / BLOCK;
        assert!(w.len() >= blocks * 34 && xs.len() >= N * cols && out.len() >= N);
        let mut lo_acc = [_mm512_setzero_ps(); N];
        let mut hi_acc = [_mm512_setzero_ps(); N];
        for b in 0..blocks {
            let p = w.as_ptr().add(b * 34);
            let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(
                p as *const u16,
            ) as i32)));
            let dv = _mm512_set1_ps(d);
            let q_lo = _mm_loadu_si128(p.add(2) as *const __m128i);
            let q_hi = _mm_loadu_si128(p.add(18) as *const __m128i);
            let w_lo = _mm512_mul_ps(dv, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q_lo)));
            let w_hi = _mm512_mul_ps(dv, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q_hi)));
            for i in 0..N {
                let xp = xs.as_ptr().add(i * cols + b * BLOCK);
                lo_acc[i] = _mm512_fmadd_ps(w_lo, _mm512_loadu_ps(xp), lo_acc[i]);
                hi_acc[i] = _mm512_fmadd_ps(w_hi, _mm512_loadu_ps(xp.add(16)), hi_acc[i]);
            }
        }
        for i in 0..N {
            out[i] = _mm512_reduce_add_ps(_mm512_add_ps(lo_acc[i], hi_acc[i]));
        }
    }
}

fn dot_q8_0_scalar(w: &[u8], x: &[f32]) -> f32 {
    let mut total = 0f32;
    for (b, block) in w.chunks_exact(34).enumerate() {
        let d = f16_to_f32(u16::from_le_bytes([block[0], block[1]]));
        let xb = &x[b * BLOCK..(b + 1) * BLOCK];
        let s: f32 = block[2..]
            .iter()
            .zip(xb)
            .map(|(&q, &x)| q as i8 as f32 * x)
            .sum();
        total += d * s;
    }
    total
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q8_0_avx2(w: &[u8], x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = _mm256_setzero_ps();
    for (b, block) in w.chunks_exact(34).enumerate() {
        let p = block.as_ptr();
        let dv = _mm_cvtph_ps(_mm_cvtsi32_si128(
            std::ptr::read_unaligned(p as *const u16) as i32
        ));
        let d = _mm256_set1_ps(_mm_cvtss_f32(dv));
        let xp = x.as_ptr().add(b * BLOCK);
        let mut s = _mm256_setzero_ps();
        for k in 0..4 {
            let q8 = _mm_loadl_epi64(p.add(2 + 8 * k) as *const __m128i);
            let q = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q8));
            s = _mm256_fmadd_ps(q, _mm256_loadu_ps(xp.add(8 * k)), s);
        }
        acc = _mm256_fmadd_ps(d, s, acc);
    }
    let h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    let h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
    _mm_cvtss_f32(h)
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

fn dot_scalar(w: &[u8], x: &[f32], block_sums: &[f32]) -> f32 {
    let mut total = 0f32;
    for (b, block) in w.chunks_exact(20).enumerate() {
        let d = f16_to_f32(u16::from_le_bytes([block[0], block[1]]));
        let m = f16_to_f32(u16::from_le_bytes([block[2], block[3]]));
        let xb = &x[b * BLOCK..(b + 1) * BLOCK];
        let mut s = 0f32;
        for (j, &q) in block[4..].iter().enumerate() {
            s += (q & 0x0f) as f32 * xb[j] + (q >> 4) as f32 * xb[j + 16];
        }
        total += d * s + m * block_sums[b];
    }
    total
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_avx2(w: &[u8], x: &[f32], block_sums: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let mask = _mm_set1_epi8(0x0f);
    let mut acc = _mm256_setzero_ps();
    let mut m_term = 0f32;
    for (b, block) in w.chunks_exact(20).enumerate() {
        let p = block.as_ptr();
        // d and m: two f16 at the start of the block.
        let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(p as *const i32)));
        let d = _mm256_set1_ps(_mm_cvtss_f32(dm));
        m_term += _mm_cvtss_f32(_mm_shuffle_ps(dm, dm, 1)) * block_sums[b];
        let qs = _mm_loadu_si128(p.add(4) as *const __m128i);
        let lo = _mm_and_si128(qs, mask); // elements 0..16
        let hi = _mm_and_si128(_mm_srli_epi16(qs, 4), mask); // elements 16..32
        let xp = x.as_ptr().add(b * BLOCK);
        let q0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));
        let q1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)));
        let q2 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));
        let q3 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)));
        let mut s = _mm256_mul_ps(q0, _mm256_loadu_ps(xp));
        s = _mm256_fmadd_ps(q1, _mm256_loadu_ps(xp.add(8)), s);
        s = _mm256_fmadd_ps(q2, _mm256_loadu_ps(xp.add(16)), s);
        s = _mm256_fmadd_ps(q3, _mm256_loadu_ps(xp.add(24)), s);
        acc = _mm256_fmadd_ps(d, s, acc);
    }
    let h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    let h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
    _mm_cvtss_f32(h) + m_term
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equals_dequantized_matmul() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (48, 96), &dev).unwrap();
        let q = std::sync::Arc::new(QTensor::quantize(&w, GgmlDType::Q4_1).unwrap());
        let m = QuantMatrix::from_qtensor(&q).unwrap().unwrap();
        // 1 to 8 rows: the kernel; 12 rows: dequantize + GEMM.
        for n in [1, 3, 8, 12] {
            let x = Tensor::randn(0f32, 1.0, (n, 96), &dev).unwrap();
            let reference = x.matmul(&q.dequantize(&dev).unwrap().t().unwrap()).unwrap();
            let diff = (m.forward(&x).unwrap() - &reference)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-4, "{n} rows: {diff}");
        }
        let rows: Vec<f32> = (0..96).map(|i| i as f32 / 7.0).collect();
        let xb: Vec<f32> = rows.chunks(BLOCK).map(|b| b.iter().sum()).collect();
        let row_bytes = 96 / BLOCK * 20;
        let scalar = dot_scalar(&m.data[..row_bytes], &rows, &xb);
        let fast = dot(Kernel::detect(), &m.data[..row_bytes], &rows, &xb);
        assert!((scalar - fast).abs() < 1e-3, "{scalar} {fast}");
    }

    #[test]
    fn q8_0_equals_dequantized_matmul() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (40, 64), &dev).unwrap();
        let q = std::sync::Arc::new(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap());
        let m = QuantMatrix::from_qtensor(&q).unwrap().unwrap();
        for n in [1, 2, 8] {
            let x = Tensor::randn(0f32, 1.0, (n, 64), &dev).unwrap();
            let reference = x.matmul(&q.dequantize(&dev).unwrap().t().unwrap()).unwrap();
            let diff: f32 = (m.forward(&x).unwrap() - &reference)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar()
                .unwrap();
            assert!(diff < 1e-4, "{n} rows: {diff}");
        }
        let xs: Vec<f32> = (0..64).map(|i| i as f32 / 9.0 - 3.0).collect();
        let row = &m.data[..2 * 34];
        assert!((dot_q8_0_scalar(row, &xs) - dot_q8_0(Kernel::detect(), row, &xs)).abs() < 1e-3);
    }

    #[test]
    fn f16_conversion() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x0000), 0.0);
    }
}
