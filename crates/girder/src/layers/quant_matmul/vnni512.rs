//! AVX-512 VNNI kernels over matrices re-laid out at load ([`Split`]), four blocks (128
//! weights) per step.
//!
//! GGUF interleaves each block's f16 scales with its weight bytes, and a Q4_1 block holds
//! elements `j` and `j + 16` in one byte. Read as stored, two blocks cost eight instructions
//! of loads, shuffles and masks before their one `vpdpbusd` (`perf`: most of a decode step).
//! [`Split`] keeps each row's weight bytes apart from its scales, four blocks' nibbles in one
//! 64-byte line, so one load, one shift and two masks give the low halves (elements 0..16) and
//! the high halves (16..32) of four blocks; the activations are rounded into the same order
//! ([`Groups`]). Two `vpdpbusd` then sum 128 products into 16 i32 lanes, four per block, which
//! one conversion and one multiply-add scale by their blocks' `d · e`: five instructions per
//! 128 products where the stored layout took eight per 64.
//!
//! Both formats reach the instruction as unsigned bytes with a per-block offset: Q4_1's nibbles
//! `q` (weight `d q + m`), and Q8_0's signed bytes plus 128, stored so at load (weight
//! `d (u − 128)`, i.e. `m = −128 d`). The offsets' term `Σ_b m_b · e_b Σ a` is summed apart,
//! 16 blocks per multiply-add.
//!
//! Two kernels share every instruction on a product: [`rows`] (one weight row against up to
//! eight activation rows, the weight unpacked in registers: decoding) and [`tiles`] (weight
//! rows unpacked once into a buffer, register tiles of 4 × 4: prompts and batches). Their
//! results are equal bit for bit, so a sequence decodes the same alone or in a batch.

#![allow(clippy::needless_range_loop)] // `i`, `c` pick accumulators and rows

use super::{ByteActivations, Format, BLOCK};
use crate::layers::kernels::avx512::{sum_lanes, sum_lanes_16};
use std::arch::x86_64::*;

/// Blocks per group: one 64-byte line of Q4_1 nibbles.
pub(super) const GROUP: usize = 4;
/// Blocks whose scales one register holds (16 f16 widened to 16 f32).
const CHUNK: usize = 16;
/// Weight rows of one register tile.
const TILE_WEIGHTS: usize = 4;
/// Activation rows of one register tile.
const TILE_ACTIVATIONS: usize = 4;

/// A Q4_1 or Q8_0 matrix laid out for these kernels, row by row:
/// - `q`: the weight bytes. Q4_1: each block's 16 nibble bytes as stored, blocks in order.
///   Q8_0: per group of (up to) four blocks, the groups' elements 0..16 block after block,
///   then their elements 16..32, each byte `q + 128`.
/// - `d`, `m`: each block's f16 scale and (Q4_1) minimum.
///
/// The bytes per block are the file's (20 and 34), so the weights streamed per token do not
/// grow.
#[derive(Debug)]
pub(super) struct Split {
    format: Format,
    rows: usize,
    blocks: usize,
    q: Vec<u8>,
    d: Vec<u16>,
    m: Vec<u16>,
}

impl Split {
    /// `data`: `rows` rows of `blocks` blocks in GGUF's layout.
    pub(super) fn new(format: Format, rows: usize, blocks: usize, data: &[u8]) -> Split {
        let payload = format.block_bytes() - format.header_bytes();
        let mut split = Split {
            format,
            rows,
            blocks,
            q: vec![0; rows * blocks * payload],
            d: Vec::with_capacity(rows * blocks),
            m: Vec::with_capacity(if format == Format::Q4_1 {
                rows * blocks
            } else {
                0
            }),
        };
        for (r, row) in data.chunks_exact(blocks * format.block_bytes()).enumerate() {
            let out = &mut split.q[r * blocks * payload..(r + 1) * blocks * payload];
            for (b, block) in row.chunks_exact(format.block_bytes()).enumerate() {
                split.d.push(u16::from_le_bytes([block[0], block[1]]));
                match format {
                    Format::Q4_1 => {
                        split.m.push(u16::from_le_bytes([block[2], block[3]]));
                        out[b * 16..(b + 1) * 16].copy_from_slice(&block[4..20]);
                    }
                    Format::Q8_0 => {
                        let (group, slot) = (b / GROUP, b % GROUP);
                        let in_group = GROUP.min(blocks - group * GROUP);
                        let low = group * GROUP * 32 + slot * 16;
                        let high = low + in_group * 16;
                        for j in 0..16 {
                            out[low + j] = block[2 + j] ^ 0x80;
                            out[high + j] = block[18 + j] ^ 0x80;
                        }
                    }
                }
            }
        }
        split
    }

    pub(super) fn rows(&self) -> usize {
        self.rows
    }

    fn row_bytes(&self) -> usize {
        self.blocks * (self.format.block_bytes() - self.format.header_bytes())
    }
}

/// Activation rows rounded to bytes ([`ByteActivations`]) in the order of [`Split`]'s groups:
/// per row and group of four blocks, the blocks' elements 0..16 then their elements 16..32
/// (128 bytes, zero past the last block), and each block's scale once per i32 lane its
/// products land in (16 f32).
pub(super) struct Groups {
    groups: usize,
    blocks: usize,
    q: Vec<i8>,
    scales: Vec<f32>,
    /// `[rows, groups · 4]`: each block's `scale · Σ q`.
    sums: Vec<f32>,
}

impl Groups {
    pub(super) fn new(a: &ByteActivations, n: usize) -> Groups {
        let blocks = a.blocks;
        let groups = blocks.div_ceil(GROUP);
        let mut g = Groups {
            groups,
            blocks,
            q: vec![0; n * groups * 128],
            scales: vec![0.0; n * groups * 16],
            sums: vec![0.0; n * groups * GROUP],
        };
        for i in 0..n {
            for b in 0..blocks {
                let (group, slot) = (i * groups + b / GROUP, b % GROUP);
                let src = &a.q[(i * blocks + b) * BLOCK..(i * blocks + b + 1) * BLOCK];
                let low = group * 128 + slot * 16;
                g.q[low..low + 16].copy_from_slice(&src[..16]);
                g.q[low + 64..low + 80].copy_from_slice(&src[16..]);
                g.scales[group * 16 + slot * 4..group * 16 + slot * 4 + 4]
                    .fill(a.scales[i * blocks + b]);
                g.sums[i * groups * GROUP + b] = a.sums[i * blocks + b];
            }
        }
        g
    }
}

#[inline(always)]
fn lanes_up_to(count: usize) -> __mmask16 {
    if count >= 16 {
        0xffff
    } else {
        (1u16 << count) - 1
    }
}

/// `d` and `m` of blocks `first..first + count` (`count` ≤ 16) of row `r`, one per lane (the
/// rest zero).
#[inline(always)]
unsafe fn chunk_scales(
    format: Format,
    w: &Split,
    r: usize,
    first: usize,
    count: usize,
) -> (__m512, __m512) {
    let at = r * w.blocks + first;
    let mask = lanes_up_to(count);
    let d = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(
        mask,
        w.d.as_ptr().add(at) as *const i16,
    ));
    let m = match format {
        Format::Q4_1 => _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(
            mask,
            w.m.as_ptr().add(at) as *const i16,
        )),
        Format::Q8_0 => _mm512_mul_ps(d, _mm512_set1_ps(-128.0)),
    };
    (d, m)
}

/// Lanes `4j..4j + 4` of a chunk's scales (group `j` of the chunk), each repeated for the
/// four lanes of its block's products.
#[inline(always)]
unsafe fn group_scales(v: __m512, j: usize) -> __m512 {
    let index = _mm512_add_epi32(
        _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3),
        _mm512_set1_epi32(4 * j as i32),
    );
    _mm512_permutexvar_ps(index, v)
}

/// The unsigned weight bytes of group `g` of a row at `row`: elements 0..16 of its blocks,
/// then elements 16..32 (zero past the row's last block).
#[inline(always)]
unsafe fn weight_group(
    format: Format,
    row: *const u8,
    blocks: usize,
    g: usize,
) -> (__m512i, __m512i) {
    let in_group = GROUP.min(blocks - g * GROUP);
    let mask = if in_group == GROUP {
        u64::MAX
    } else {
        (1u64 << (16 * in_group)) - 1
    };
    match format {
        Format::Q4_1 => {
            let nibbles = _mm512_maskz_loadu_epi8(mask, row.add(g * 64) as *const i8);
            let low = _mm512_set1_epi8(0x0f);
            (
                _mm512_and_si512(nibbles, low),
                _mm512_and_si512(_mm512_srli_epi16::<4>(nibbles), low),
            )
        }
        Format::Q8_0 => {
            let p = row.add(g * 128);
            (
                _mm512_maskz_loadu_epi8(mask, p as *const i8),
                _mm512_maskz_loadu_epi8(mask, p.add(16 * in_group) as *const i8),
            )
        }
    }
}

/// Activation row `i`'s bytes (elements 0..16 and 16..32 of group `g`'s blocks) and scales.
#[inline(always)]
unsafe fn activation(a: &Groups, i: usize, g: usize) -> (__m512i, __m512i, __m512) {
    let at = i * a.groups + g;
    let q = a.q.as_ptr().add(at * 128);
    (
        _mm512_loadu_si512(q as *const _),
        _mm512_loadu_si512(q.add(64) as *const _),
        _mm512_loadu_ps(a.scales.as_ptr().add(at * 16)),
    )
}

/// Activation row `i`'s `scale · Σ q` of blocks `first..first + count` (the rest zero).
#[inline(always)]
unsafe fn sums(a: &Groups, i: usize, first: usize, count: usize) -> __m512 {
    _mm512_maskz_loadu_ps(
        lanes_up_to(count),
        a.sums.as_ptr().add(i * a.groups * GROUP + first),
    )
}

/// One group's products added to `acc`: `d e Σ u a`, four lanes per block.
#[inline(always)]
unsafe fn step(
    acc: __m512,
    (low, high, d): (__m512i, __m512i, __m512),
    (x_low, x_high, e): (__m512i, __m512i, __m512),
) -> __m512 {
    let dot = _mm512_dpbusd_epi32(
        _mm512_dpbusd_epi32(_mm512_setzero_si512(), low, x_low),
        high,
        x_high,
    );
    _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(d, e), acc)
}

/// Where results go: `out[i · stride + r]` for activation row `i` and weight row `r`.
#[derive(Clone, Copy)]
pub(super) struct Output {
    pub(super) at: *mut f32,
    pub(super) stride: usize,
}

/// `out[i · stride + r] = w_r · x_i` for weight row `r` and activation rows `0..N` from `first`.
///
/// # Safety
/// AVX-512 F/BW/DQ/VL/VNNI and F16C; `r < w.rows`, `a` holds rows `first..first + N` of
/// `w.blocks` blocks, `out` valid for writes at those offsets.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,f16c")]
pub(super) unsafe fn rows<const N: usize>(
    w: &Split,
    r: usize,
    a: &Groups,
    first: usize,
    out: Output,
) {
    debug_assert!(r < w.rows && a.blocks == w.blocks);
    // The format a constant in each copy of the loop.
    match w.format {
        Format::Q4_1 => rows_of::<N>(Format::Q4_1, w, r, a, first, out),
        Format::Q8_0 => rows_of::<N>(Format::Q8_0, w, r, a, first, out),
    }
}

#[inline(always)]
unsafe fn rows_of<const N: usize>(
    format: Format,
    w: &Split,
    r: usize,
    a: &Groups,
    first: usize,
    out: Output,
) {
    let blocks = w.blocks;
    let row = w.q.as_ptr().add(r * w.row_bytes());
    let mut acc = [_mm512_setzero_ps(); N];
    let mut offsets = [_mm512_setzero_ps(); N];
    for chunk in (0..blocks).step_by(CHUNK) {
        let count = CHUNK.min(blocks - chunk);
        let (d, m) = chunk_scales(format, w, r, chunk, count);
        for i in 0..N {
            offsets[i] = _mm512_fmadd_ps(m, sums(a, first + i, chunk, count), offsets[i]);
        }
        for j in 0..count.div_ceil(GROUP) {
            let g = chunk / GROUP + j;
            let (low, high) = weight_group(format, row, blocks, g);
            let weights = (low, high, group_scales(d, j));
            for i in 0..N {
                acc[i] = step(acc[i], weights, activation(a, first + i, g));
            }
        }
    }
    for i in 0..N {
        *out.at.add(i * out.stride + r) = sum_lanes(_mm512_add_ps(acc[i], offsets[i]));
    }
}

/// Weight rows unpacked for [`tiles`]: `[rows, groups]` of the weight bytes' two halves and
/// the blocks' `d` per lane, and `[rows, chunks of 16 blocks]` of the offsets `m`. A thread
/// keeps one and refills it for each of its chunks of weight rows.
#[derive(Default)]
pub(super) struct Unpacked {
    groups: usize,
    chunks: usize,
    low: Vec<__m512i>,
    high: Vec<__m512i>,
    d: Vec<__m512>,
    m: Vec<__m512>,
}

#[inline(always)]
unsafe fn unpack(un: &mut Unpacked, format: Format, w: &Split, rows: std::ops::Range<usize>) {
    let blocks = w.blocks;
    un.groups = blocks.div_ceil(GROUP);
    un.chunks = blocks.div_ceil(CHUNK);
    un.low.clear();
    un.high.clear();
    un.d.clear();
    un.m.clear();
    for r in rows {
        let row = w.q.as_ptr().add(r * w.row_bytes());
        for chunk in (0..blocks).step_by(CHUNK) {
            let count = CHUNK.min(blocks - chunk);
            let (d, m) = chunk_scales(format, w, r, chunk, count);
            un.m.push(m);
            for j in 0..count.div_ceil(GROUP) {
                let (low, high) = weight_group(format, row, blocks, chunk / GROUP + j);
                un.low.push(low);
                un.high.push(high);
                un.d.push(group_scales(d, j));
            }
        }
    }
}

/// `out[i · stride + r] = w_r · x_i` for weight rows `rows` and activation rows `0..n`.
///
/// # Safety
/// AVX-512 F/BW/DQ/VL/VNNI and F16C; `rows` within `w`, `a` holds `n` rows of `w.blocks`
/// blocks, `out` valid for writes at those offsets.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,f16c")]
pub(super) unsafe fn tiles(
    w: &Split,
    rows: std::ops::Range<usize>,
    a: &Groups,
    n: usize,
    out: Output,
    un: &mut Unpacked,
) {
    assert!(rows.end <= w.rows && a.blocks == w.blocks && a.sums.len() >= n * a.groups * GROUP);
    match w.format {
        Format::Q4_1 => unpack(un, Format::Q4_1, w, rows.clone()),
        Format::Q8_0 => unpack(un, Format::Q8_0, w, rows.clone()),
    }
    // The next weight rows a thread takes are (rayon splits ranges) the ones after these:
    // fetched into L2 while this chunk multiplies, instead of stalling the next unpack.
    prefetch_rows(w, rows.end..w.rows.min(rows.end + rows.len()));
    let un = &*un;
    let count = rows.len();
    for i in (0..n).step_by(TILE_ACTIVATIONS) {
        let acts = TILE_ACTIVATIONS.min(n - i);
        for c in (0..count).step_by(TILE_WEIGHTS) {
            let ws = TILE_WEIGHTS.min(count - c);
            let dst = Output {
                at: out.at.add(rows.start),
                stride: out.stride,
            };
            match (ws, acts) {
                (4, 4) => tile::<4, 4>(un, a, c, i, dst),
                (4, 3) => tile::<4, 3>(un, a, c, i, dst),
                (4, 2) => tile::<4, 2>(un, a, c, i, dst),
                (4, _) => tile::<4, 1>(un, a, c, i, dst),
                (3, 4) => tile::<3, 4>(un, a, c, i, dst),
                (3, 3) => tile::<3, 3>(un, a, c, i, dst),
                (3, 2) => tile::<3, 2>(un, a, c, i, dst),
                (3, _) => tile::<3, 1>(un, a, c, i, dst),
                (2, 4) => tile::<2, 4>(un, a, c, i, dst),
                (2, 3) => tile::<2, 3>(un, a, c, i, dst),
                (2, 2) => tile::<2, 2>(un, a, c, i, dst),
                (2, _) => tile::<2, 1>(un, a, c, i, dst),
                (_, 4) => tile::<1, 4>(un, a, c, i, dst),
                (_, 3) => tile::<1, 3>(un, a, c, i, dst),
                (_, 2) => tile::<1, 2>(un, a, c, i, dst),
                (_, _) => tile::<1, 1>(un, a, c, i, dst),
            }
        }
    }
}

/// Asks for weight rows `rows` (bytes and scales) to be brought into L2.
#[inline(always)]
unsafe fn prefetch_rows(w: &Split, rows: std::ops::Range<usize>) {
    if rows.is_empty() {
        return;
    }
    let lines = |start: *const u8, bytes: usize| {
        for offset in (0..bytes).step_by(64) {
            _mm_prefetch::<_MM_HINT_T1>(start.add(offset) as *const i8);
        }
    };
    let (first, count) = (rows.start, rows.len());
    lines(
        w.q.as_ptr().add(first * w.row_bytes()),
        count * w.row_bytes(),
    );
    lines(
        w.d.as_ptr().add(first * w.blocks) as *const u8,
        count * w.blocks * 2,
    );
    if !w.m.is_empty() {
        lines(
            w.m.as_ptr().add(first * w.blocks) as *const u8,
            count * w.blocks * 2,
        );
    }
}

/// Unpacked weight rows `first..first + W` times activation rows `act..act + A`.
#[inline(always)]
unsafe fn tile<const W: usize, const A: usize>(
    un: &Unpacked,
    a: &Groups,
    first: usize,
    act: usize,
    dst: Output,
) {
    let groups = un.groups;
    let mut acc = [[_mm512_setzero_ps(); A]; W];
    for g in 0..groups {
        let mut weights = [(
            _mm512_setzero_si512(),
            _mm512_setzero_si512(),
            _mm512_setzero_ps(),
        ); W];
        for c in 0..W {
            let at = (first + c) * groups + g;
            weights[c] = (
                *un.low.get_unchecked(at),
                *un.high.get_unchecked(at),
                *un.d.get_unchecked(at),
            );
        }
        for i in 0..A {
            let x = activation(a, act + i, g);
            for c in 0..W {
                acc[c][i] = step(acc[c][i], weights[c], x);
            }
        }
    }
    let blocks = a.blocks;
    for c in 0..W {
        let mut offsets = [_mm512_setzero_ps(); A];
        for (k, chunk) in (0..blocks).step_by(CHUNK).enumerate() {
            let m = *un.m.get_unchecked((first + c) * un.chunks + k);
            for i in 0..A {
                let s = sums(a, act + i, chunk, CHUNK.min(blocks - chunk));
                offsets[i] = _mm512_fmadd_ps(m, s, offsets[i]);
            }
        }
        for i in 0..A {
            acc[c][i] = _mm512_add_ps(acc[c][i], offsets[i]);
        }
    }
    store_tile(&acc, dst, first, act);
}

/// Each accumulator's lanes summed into its place in the output: a full 4 × 4 tile through
/// `sum_lanes_16`, a partial one accumulator by accumulator. Both add the lanes in
/// `sum_lanes`'s pairs, so a result does not depend on the tile it was in.
#[inline(always)]
unsafe fn store_tile<const W: usize, const A: usize>(
    acc: &[[__m512; A]; W],
    dst: Output,
    first: usize,
    act: usize,
) {
    const _: () = assert!(TILE_WEIGHTS == 4 && TILE_ACTIVATIONS == 4);
    if W == 4 && A == 4 {
        // Lanes 4i..4i+4 of the sums: activation row i's four weight rows.
        let mut vs = [_mm512_setzero_ps(); 16];
        for i in 0..4 {
            for c in 0..4 {
                vs[4 * i + c] = acc[c][i];
            }
        }
        let sums = sum_lanes_16(&vs);
        for i in 0..4 {
            let row = dst.at.add((act + i) * dst.stride + first);
            _mm_storeu_ps(row, extract_quarter(sums, i));
        }
        return;
    }
    for c in 0..W {
        for i in 0..A {
            *dst.at.add((act + i) * dst.stride + first + c) = sum_lanes(acc[c][i]);
        }
    }
}

#[inline(always)]
unsafe fn extract_quarter(v: __m512, i: usize) -> __m128 {
    match i {
        0 => _mm512_extractf32x4_ps::<0>(v),
        1 => _mm512_extractf32x4_ps::<1>(v),
        2 => _mm512_extractf32x4_ps::<2>(v),
        _ => _mm512_extractf32x4_ps::<3>(v),
    }
}
