//! AVX2 kernels over the blocks as GGUF stores them, one block per step: `vpmaddubsw`
//! multiplies the weights' unsigned bytes by the activations' signed ones and adds pairs into
//! i16 (at most 2 · 15 · 127 or 2 · 127 · 127, no saturation), `vpmaddwd` by ones widens to
//! i32.

#![allow(clippy::needless_range_loop)] // `i` picks an accumulator and an activation row's offset

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
