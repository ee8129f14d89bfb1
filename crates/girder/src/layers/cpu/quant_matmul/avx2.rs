//! AVX2 kernels over the blocks as GGUF stores them, one block of 32 per step: the block's
//! weights unpacked into a register of bytes, then `vpmaddubsw` multiplies them (unsigned) by
//! the activations' signed bytes and adds pairs into i16 (at most 2 · 128 · 127, no
//! saturation), `vpmaddwd` by ones widens to i32. The types with an offset and no minimum
//! fold `−s · o` into the block's minimum term; Q6_K and Q8_0, whose halves or bytes are
//! signed, move the weights' sign onto the activations.

#![allow(clippy::needless_range_loop)] // `i` picks an accumulator and an activation row's offset

use super::formats::{self, BlockScales, Format};
use super::{ByteActivations, BLOCK};
use std::arch::x86_64::*;

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)))
}

/// `out[i] = w · x_i` for a Q4_1 row `w` and activation rows `0..N`.
///
/// # Safety
/// AVX2, FMA and F16C; `w` holds `a.blocks` blocks, `a` at least `N` rows.
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
            let scale = _mm256_set1_ps(d * *a.scales.get_unchecked(row));
            acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc[i]);
            m_terms[i] += m * *a.sums.get_unchecked(row);
        }
    }
    for (i, o) in out.iter_mut().enumerate().take(N) {
        *o = hsum(acc[i]) + m_terms[i];
    }
}

/// `out[i] = w · x_i` for a Q8_0 row `w` and activation rows `0..N`.
///
/// # Safety
/// As [`q4_1`].
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
            let scale = _mm256_set1_ps(d * *a.scales.get_unchecked(row));
            acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc[i]);
        }
    }
    for (i, o) in out.iter_mut().enumerate().take(N) {
        *o = hsum(acc[i]);
    }
}

/// Every weight of one file block's scales as `w = s_k · q + m_k` per block `k` of 32, the
/// type's integer offset folded into `m_k` (`m − s · o`), so that one unsigned dot product and
/// the activations' block sum give the block's contribution.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn group_scales(format: Format, b: &[u8], s: &mut [f32; 8], m: &mut [f32; 8]) {
    let header = formats::header(format, b);
    for k in 0..format.group_blocks() {
        let scales = BlockScales::new(format, &header, formats::sub_scales_of(format, b, k));
        s[k] = scales.s[0];
        m[k] = scales.minimum - scales.s[0] * scales.offset as f32;
    }
}

/// The legacy types' nibbles: byte `j`'s low nibble is weight `j`, its high nibble `j + 16`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn legacy_nibbles(qs: *const u8) -> __m256i {
    let mask = _mm_set1_epi8(0x0f);
    let bytes = _mm_loadu_si128(qs as *const __m128i);
    _mm256_set_m128i(
        _mm_and_si128(_mm_srli_epi16(bytes, 4), mask),
        _mm_and_si128(bytes, mask),
    )
}

/// 0x10 in byte `j` where bit `j` of `qh` is set (Q5_0 / Q5_1's fifth bits).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn fifth_bits(qh: u32) -> __m256i {
    // Byte j takes byte j / 8 of qh, then tests its bit j % 8.
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(qh as i32),
        _mm256_set_epi64x(
            0x0303_0303_0303_0303,
            0x0202_0202_0202_0202,
            0x0101_0101_0101_0101,
            0,
        ),
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// The unsigned `q_j` of block `k` of the file block at `b` (every type but Q6_K and Q8_0),
/// as [`formats::unpack_group`] reads them.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unsigned_weights(format: Format, b: *const u8, k: usize) -> __m256i {
    let low = _mm256_set1_epi8(0x0f);
    let qh_at = |at: usize| std::ptr::read_unaligned(b.add(at) as *const u32);
    match format {
        Format::Q4_0 => legacy_nibbles(b.add(2)),
        Format::Q4_1 => legacy_nibbles(b.add(4)),
        Format::Q5_0 => _mm256_or_si256(legacy_nibbles(b.add(6)), fifth_bits(qh_at(2))),
        Format::Q5_1 => _mm256_or_si256(legacy_nibbles(b.add(8)), fifth_bits(qh_at(4))),
        Format::Q4K | Format::Q5K => {
            // Blocks 2i and 2i + 1 share 32 bytes: low nibbles, then high nibbles; Q5_K's
            // fifth bit of block k is bit k of the 32 `qh` bytes.
            let qs = if format == Format::Q5K { 48 } else { 16 };
            let bytes = _mm256_loadu_si256(b.add(qs + 32 * (k / 2)) as *const __m256i);
            let bytes = if k.is_multiple_of(2) {
                bytes
            } else {
                _mm256_srli_epi16(bytes, 4)
            };
            let q = _mm256_and_si256(bytes, low);
            if format == Format::Q4K {
                return q;
            }
            let qh = _mm256_loadu_si256(b.add(16) as *const __m256i);
            let bit = _mm256_set1_epi8((1u8 << k) as i8);
            let set = _mm256_cmpeq_epi8(_mm256_and_si256(qh, bit), bit);
            _mm256_or_si256(q, _mm256_and_si256(set, _mm256_set1_epi8(0x10)))
        }
        Format::Q6K | Format::Q8_0 => unreachable!("signed types have their own kernels"),
    }
}

/// `out[i] = w · x_i` for a row `w` of Q4_0, Q5_0, Q5_1, Q4_K or Q5_K and activation rows
/// `0..N`: per block one `vpmaddubsw` of the unsigned weights by each row's bytes, scaled by
/// `s_k · e`, plus `m_k` times the row's block sum.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unsigned_rows<const N: usize>(
    format: Format,
    w: &[u8],
    a: &ByteActivations,
    out: &mut [f32],
) {
    let (group, bytes) = (format.group_blocks(), format.file_block_bytes());
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); N];
    let mut m_terms = [0f32; N];
    let (mut s, mut m) = ([0f32; 8], [0f32; 8]);
    for g in 0..a.blocks / group {
        let file_block = &w[g * bytes..(g + 1) * bytes];
        group_scales(format, file_block, &mut s, &mut m);
        for k in 0..group {
            let q = unsigned_weights(format, file_block.as_ptr(), k);
            let b = g * group + k;
            for i in 0..N {
                let row = i * a.blocks + b;
                let x = _mm256_loadu_si256(a.q.as_ptr().add(row * BLOCK) as *const __m256i);
                let dot = _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), ones);
                let scale = _mm256_set1_ps(s[k] * *a.scales.get_unchecked(row));
                acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc[i]);
                m_terms[i] += m[k] * *a.sums.get_unchecked(row);
            }
        }
    }
    for (i, o) in out.iter_mut().enumerate().take(N) {
        *o = hsum(acc[i]) + m_terms[i];
    }
}

macro_rules! unsigned_kernel {
    ($name:ident, $format:expr) => {
        /// `out[i] = w · x_i` for a row `w` of this type and activation rows `0..N`.
        ///
        /// # Safety
        /// As [`q4_1`].
        #[target_feature(enable = "avx2,fma,f16c")]
        pub(super) unsafe fn $name<const N: usize>(w: &[u8], a: &ByteActivations, out: &mut [f32]) {
            unsigned_rows::<N>($format, w, a, out)
        }
    };
}

unsigned_kernel!(q4_0, Format::Q4_0);
unsigned_kernel!(q5_0, Format::Q5_0);
unsigned_kernel!(q5_1, Format::Q5_1);
unsigned_kernel!(q4_k, Format::Q4K);
unsigned_kernel!(q5_k, Format::Q5K);

/// `out[i] = w · x_i` for a Q6_K row `w` and activation rows `0..N`: each block's weights
/// `q − 32` as signed bytes (the sign moved onto the activations for `vpmaddubsw`), its two
/// halves scaled by their own `s_h · e`.
///
/// # Safety
/// As [`q4_1`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q6_k<const N: usize>(w: &[u8], a: &ByteActivations, out: &mut [f32]) {
    let format = Format::Q6K;
    let bytes = format.file_block_bytes();
    let ones = _mm256_set1_epi16(1);
    let (low, two, offset) = (
        _mm256_set1_epi8(0x0f),
        _mm256_set1_epi8(0x03),
        _mm256_set1_epi8(32),
    );
    let mut acc = [_mm256_setzero_ps(); N];
    for g in 0..a.blocks / 8 {
        let b = &w[g * bytes..(g + 1) * bytes];
        let header = formats::header(format, b);
        let p = b.as_ptr();
        for k in 0..8 {
            let scales = BlockScales::new(format, &header, formats::sub_scales_of(format, b, k));
            let halves = _mm256_set_m128(_mm_set1_ps(scales.s[1]), _mm_set1_ps(scales.s[0]));
            // Weight 32k + l: 128-weight half n = k / 4, 32-weight group j = k % 4 of it: low
            // nibble of ql[64n + 32(j % 2) + l] (high nibble for j ≥ 2), bits 2j..2j + 2 of
            // qh[32n + l].
            let (n, j) = (k / 4, k % 4);
            let ql = _mm256_loadu_si256(p.add(64 * n + 32 * (j % 2)) as *const __m256i);
            let ql = if j < 2 { ql } else { _mm256_srli_epi16(ql, 4) };
            let qh = _mm256_loadu_si256(p.add(128 + 32 * n) as *const __m256i);
            let high = match j {
                0 => qh,
                1 => _mm256_srli_epi16(qh, 2),
                2 => _mm256_srli_epi16(qh, 4),
                _ => _mm256_srli_epi16(qh, 6),
            };
            let q = _mm256_or_si256(
                _mm256_and_si256(ql, low),
                _mm256_slli_epi16(_mm256_and_si256(high, two), 4),
            );
            let signed = _mm256_sub_epi8(q, offset);
            let magnitude = _mm256_sign_epi8(signed, signed);
            let block = g * 8 + k;
            for i in 0..N {
                let row = i * a.blocks + block;
                let x = _mm256_loadu_si256(a.q.as_ptr().add(row * BLOCK) as *const __m256i);
                let dot = _mm256_madd_epi16(
                    _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(x, signed)),
                    ones,
                );
                let scale = _mm256_mul_ps(halves, _mm256_set1_ps(*a.scales.get_unchecked(row)));
                acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc[i]);
            }
        }
    }
    for (i, o) in out.iter_mut().enumerate().take(N) {
        *o = hsum(acc[i]);
    }
}
