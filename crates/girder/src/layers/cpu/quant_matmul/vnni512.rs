//! AVX-512 VNNI kernel over matrices re-laid out at load in bands of 16 rows ([`Bands`]).
//!
//! GGUF stores a matrix row by row, each block's f16 scales before its weight bytes, and a
//! Q4_1 block holds elements `j` and `j + 16` in one byte. A kernel that multiplies a row at
//! a time ends each dot product with a horizontal sum of a register's lanes, and spends most
//! of its instructions on shuffles that bring the bytes into order (`perf`: a 4 × 4 register
//! tile spent a third of its time summing lanes at SmolLM2's 576 columns).
//!
//! [`Bands`] interleaves 16 rows instead: for each block, lane `j` of a 512-bit register holds
//! four consecutive weights of row `j`. `vpdpbusd` against four activation bytes broadcast to
//! every lane then adds four products to each of 16 rows at once, eight instructions per block
//! (32 weights) for 16 rows, and the 16 lanes of the result *are* the 16 rows' outputs: no
//! lane sums, no shuffles. Per block and activation row: eight `vpdpbusd`, an integer add,
//! a conversion, a multiply of the scales and two multiply-adds, for 512 products.
//!
//! Both formats reach the instruction as unsigned bytes: Q4_1's nibbles `q` (weight
//! `d q + m`; the minimum's term `m · e Σ a` is one more multiply-add per block), and Q8_0's
//! signed bytes plus 128, stored so at load (weight `d (u − 128)`): the block's integer dot
//! product less `128 Σ a`, subtracted in integers (in floating point the two large terms
//! cancelled and left errors of ~1e-4 on outputs of ~30).
//!
//! One kernel serves every batch size, eight activation rows per pass over a band's blocks:
//! a row's result is computed with the same instructions in the same order whatever else is
//! in the batch, so a sequence decodes the same alone or in a batch, and a prompt's rows equal
//! the decode steps that would compute them.

#![allow(clippy::needless_range_loop)] // `i`, `u` pick accumulators and registers

#[cfg(doc)]
use super::ByteActivations;
use super::{round_block_avx512, Format, BLOCK, ROWS_PER_PASS as PASS};
use crate::layers::cpu::team;
use std::arch::x86_64::*;
use std::mem::MaybeUninit;

/// Rows per band: one per 32-bit lane of a 512-bit register.
pub(super) const BAND: usize = 16;

/// A Q4_1 or Q8_0 matrix in bands of [`BAND`] rows (the last padded with zero rows). Per band
/// and block, a record of the file's bytes for those 16 blocks (20 or 34 each):
/// - the weight bytes, 64 per register: register `u` holds bytes `4u..4u + 4` of each row's
///   block, row `j` in lane `j` (Q4_1: 4 registers of nibbles, the low nibbles elements
///   `4u..4u + 4`, the high ones `16 + 4u..`; Q8_0: 8 registers of `q + 128`);
/// - the 16 rows' f16 `d`, then (Q4_1) their f16 `m`.
#[derive(Debug)]
pub(super) struct Bands {
    format: Format,
    rows: usize,
    blocks: usize,
    data: Vec<u8>,
}

impl Bands {
    /// `data`: `rows` rows of `blocks` blocks in GGUF's layout.
    pub(super) fn new(format: Format, rows: usize, blocks: usize, data: &[u8]) -> Bands {
        let (block_bytes, header) = (format.block_bytes(), format.header_bytes());
        let payload = block_bytes - header;
        let record = BAND * block_bytes;
        let mut out = vec![0u8; rows.div_ceil(BAND) * blocks * record];
        for (r, row) in data.chunks_exact(blocks * block_bytes).enumerate() {
            let (band, lane) = (r / BAND, r % BAND);
            for (k, block) in row.chunks_exact(block_bytes).enumerate() {
                let dst = &mut out[(band * blocks + k) * record..][..record];
                for u in 0..payload / 4 {
                    let to = &mut dst[u * 64 + lane * 4..][..4];
                    to.copy_from_slice(&block[header + 4 * u..header + 4 * u + 4]);
                    if format == Format::Q8_0 {
                        to.iter_mut().for_each(|b| *b ^= 0x80);
                    }
                }
                let scales = BAND * payload;
                dst[scales + 2 * lane..scales + 2 * lane + 2].copy_from_slice(&block[..2]);
                if format == Format::Q4_1 {
                    let m = scales + 2 * BAND + 2 * lane;
                    dst[m..m + 2].copy_from_slice(&block[2..4]);
                }
            }
        }
        Bands {
            format,
            rows,
            blocks,
            data: out,
        }
    }

    pub(super) fn rows(&self) -> usize {
        self.rows
    }

    pub(super) fn bands(&self) -> usize {
        self.rows.div_ceil(BAND)
    }
}

/// Where results go: `out[i · stride + r]` for activation row `i` and weight row `r`.
#[derive(Clone, Copy)]
pub(super) struct Output {
    pub(super) at: *mut f32,
    pub(super) stride: usize,
}

/// Activation rows rounded for the kernel: per pass of [`ROWS_PER_PASS`](super::ROWS_PER_PASS)
/// rows and per block, one record of the rows' 32 bytes each, then their scales, their sums
/// and their offsets (`128 · Σ q`, which only Q8_0 reads). Every value a pass reads for a
/// block then lies at a fixed distance from one pointer that advances a record per block:
/// the compiler addresses each with base plus constant, where row-major activations needed
/// base plus index plus constant, which Intel cores split into two micro-operations in every
/// `vpdpbusd` that reads memory.
pub(super) struct PassActivations {
    blocks: usize,
    records: Vec<u8>,
}

const SCALES_AT: usize = PASS * BLOCK;
const SUMS_AT: usize = SCALES_AT + 4 * PASS;
const OFFSETS_AT: usize = SUMS_AT + 4 * PASS;
const RECORD: usize = OFFSETS_AT + 4 * PASS;

impl PassActivations {
    /// `xs`, `n` rows of `blocks` blocks, rounded as [`ByteActivations::quantize`] rounds
    /// them (the same [`round_block_avx512`]) straight into this layout, a pass per task on
    /// the team: no second copy of the rounded rows, and no serial regrouping.
    ///
    /// # Safety
    /// AVX-512 F (the caller saw [`Kernel::Vnni512`](super::Kernel)).
    pub(super) unsafe fn round(xs: &[f32], n: usize, blocks: usize) -> PassActivations {
        let cols = blocks * BLOCK;
        assert_eq!(xs.len(), n * cols, "activations of {n} rows of {cols}");
        let (passes, pass_bytes) = (n.div_ceil(PASS), blocks * RECORD);
        let records = team::collect_chunks(passes * pass_bytes, pass_bytes, |p, pass| {
            let rows = &xs[p * PASS * cols..((p + 1) * PASS * cols).min(xs.len())];
            // SAFETY: AVX-512 F as the caller promised; `round_pass` writes all of `pass`.
            unsafe { round_pass(rows, blocks, pass) }
        });
        PassActivations { blocks, records }
    }
}

/// One pass's records: `rows` (up to [`PASS`] rows of `blocks` blocks) rounded, rows past
/// them zero, every byte of `out` written.
#[target_feature(enable = "avx512f")]
unsafe fn round_pass(rows: &[f32], blocks: usize, out: &mut [MaybeUninit<u8>]) {
    let cols = blocks * BLOCK;
    let present = rows.len().checked_div(cols).unwrap_or(0); // no blocks: nothing to write
    assert!(out.len() == blocks * RECORD && present <= PASS && rows.len() == present * cols);
    let base = out.as_mut_ptr() as *mut u8;
    for k in 0..blocks {
        let record = base.add(k * RECORD);
        for i in 0..PASS {
            let (scale, sum) = if i < present {
                let x = rows.as_ptr().add(i * cols + k * BLOCK);
                round_block_avx512(x, record.add(i * BLOCK) as *mut i8)
            } else {
                std::ptr::write_bytes(record.add(i * BLOCK), 0, BLOCK);
                (0.0, 0)
            };
            let put = |at: usize, bytes: [u8; 4]| {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), record.add(at + 4 * i), 4)
            };
            put(SCALES_AT, scale.to_le_bytes());
            put(SUMS_AT, (scale * sum as f32).to_le_bytes());
            // What Q8_0's weights stored as `q + 128` add to the block's integer dot product.
            put(OFFSETS_AT, (128 * sum).to_le_bytes());
        }
    }
}

/// `out[i · stride + r] = w_r · x_i` for the rows `r` of band `band` and activation rows
/// `pass · PASS..pass · PASS + A`.
///
/// # Safety
/// AVX-512 F/BW/DQ/VL/VNNI and F16C; `band < w.bands()`, `a` holds pass `pass` of `w.blocks`
/// blocks (with offsets for Q8_0); `out` valid for writes at those offsets.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,f16c")]
pub(super) unsafe fn band<const A: usize>(
    w: &Bands,
    band: usize,
    a: &PassActivations,
    pass: usize,
    out: Output,
) {
    debug_assert!(band < w.bands() && a.blocks == w.blocks && A <= PASS);
    debug_assert!(a.records.len() >= (pass + 1) * a.blocks * RECORD);
    // The format a constant in each copy of the loop.
    match w.format {
        Format::Q4_1 => band_of::<A>(Format::Q4_1, w, band, a, pass, out),
        Format::Q8_0 => band_of::<A>(Format::Q8_0, w, band, a, pass, out),
    }
}

/// Block `p`'s weight registers: `[u]` for `u < 4` elements `4u..4u + 4` of each row, `[4 + u]`
/// elements `16 + 4u..`, as unsigned bytes.
#[inline(always)]
unsafe fn weights(format: Format, p: *const u8) -> [__m512i; 8] {
    let mut ws = [_mm512_setzero_si512(); 8];
    match format {
        Format::Q4_1 => {
            let low = _mm512_set1_epi8(0x0f);
            for u in 0..4 {
                let nibbles = _mm512_loadu_si512(p.add(64 * u) as *const _);
                ws[u] = _mm512_and_si512(nibbles, low);
                ws[4 + u] = _mm512_and_si512(_mm512_srli_epi16::<4>(nibbles), low);
            }
        }
        Format::Q8_0 => {
            for u in 0..8 {
                ws[u] = _mm512_loadu_si512(p.add(64 * u) as *const _);
            }
        }
    }
    ws
}

/// Adds activation row `i`'s products with block `ws` (scales `d`, minimums `m`) to `acc`;
/// `x` is the block's record of [`PassActivations`]. Called once per row with a constant
/// `i`, so that every accumulator is a register and every address a constant distance from
/// `x`.
#[inline(always)]
unsafe fn row_block(
    format: Format,
    ws: &[__m512i; 8],
    d: __m512,
    m: __m512,
    x: *const u8,
    i: usize,
    acc: &mut __m512,
) {
    let bytes = x.add(i * BLOCK);
    let four = |offset: usize| {
        _mm512_set1_epi32(std::ptr::read_unaligned(bytes.add(offset) as *const i32))
    };
    let scalar =
        |at: usize| _mm512_set1_ps(std::ptr::read_unaligned(x.add(at + 4 * i) as *const f32));
    // Elements 0..16 and 16..32 in two chains, added at the end (integers: exact).
    let (mut low, mut high) = (_mm512_setzero_si512(), _mm512_setzero_si512());
    for u in 0..4 {
        low = _mm512_dpbusd_epi32(low, ws[u], four(4 * u));
        high = _mm512_dpbusd_epi32(high, ws[4 + u], four(16 + 4 * u));
    }
    let dot = _mm512_add_epi32(low, high);
    let de = _mm512_mul_ps(d, scalar(SCALES_AT));
    match format {
        Format::Q4_1 => {
            *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), de, *acc);
            *acc = _mm512_fmadd_ps(m, scalar(SUMS_AT), *acc);
        }
        Format::Q8_0 => {
            let offset = _mm512_set1_epi32(std::ptr::read_unaligned(
                x.add(OFFSETS_AT + 4 * i) as *const i32
            ));
            let dot = _mm512_cvtepi32_ps(_mm512_sub_epi32(dot, offset));
            *acc = _mm512_fmadd_ps(dot, de, *acc);
        }
    }
}

#[inline(always)]
unsafe fn band_of<const A: usize>(
    format: Format,
    w: &Bands,
    band: usize,
    a: &PassActivations,
    pass: usize,
    out: Output,
) {
    let blocks = w.blocks;
    let record = BAND * format.block_bytes();
    let scales = BAND * (format.block_bytes() - format.header_bytes());
    let base = w.data.as_ptr().add(band * blocks * record);
    let acts = a.records.as_ptr().add(pass * blocks * RECORD);
    let mut acc = [_mm512_setzero_ps(); A];
    for k in 0..blocks {
        let p = base.add(k * record);
        let x = acts.add(k * RECORD);
        let d = _mm512_cvtph_ps(_mm256_loadu_si256(p.add(scales) as *const __m256i));
        let m = match format {
            Format::Q4_1 => _mm512_cvtph_ps(_mm256_loadu_si256(
                p.add(scales + 2 * BAND) as *const __m256i
            )),
            Format::Q8_0 => _mm512_setzero_ps(), // unused
        };
        let ws = weights(format, p);
        macro_rules! rows {
            ($($i:literal)*) => {$(
                if $i < A {
                    row_block(format, &ws, d, m, x, $i, &mut acc[$i]);
                }
            )*};
        }
        const _: () = assert!(PASS == 8);
        rows!(0 1 2 3 4 5 6 7);
    }
    let live = BAND.min(w.rows - band * BAND);
    let mask: __mmask16 = if live == BAND {
        0xffff
    } else {
        (1 << live) - 1
    };
    for i in 0..A {
        let row = out.at.add((pass * PASS + i) * out.stride + band * BAND);
        _mm512_mask_storeu_ps(row, mask, acc[i]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::cpu::quant_matmul::{ByteActivations, Kernel};

    /// The rounding into passes gives the bytes, scales and sums of [`ByteActivations`] (which
    /// the AVX2 and scalar kernels read), each row at its place in its pass's records, and
    /// zero rows past the last.
    #[test]
    fn passes_hold_the_rounded_rows() {
        if Kernel::detect() != Kernel::Vnni512 {
            return;
        }
        let (n, blocks) = (11, 3);
        let xs: Vec<f32> = (0..n * blocks * BLOCK)
            .map(|i| ((i * 7919) % 1000) as f32 / 37.0 - 13.0)
            .collect();
        let rows = ByteActivations::quantize(&xs, blocks * BLOCK);
        // SAFETY: the CPU has AVX-512 (checked above).
        let passes = unsafe { PassActivations::round(&xs, n, blocks) };
        assert_eq!(passes.records.len(), 2 * blocks * RECORD);
        let f32_at = |r: &[u8], at: usize| f32::from_le_bytes(r[at..at + 4].try_into().unwrap());
        for p in 0..2 {
            for k in 0..blocks {
                let record = &passes.records[(p * blocks + k) * RECORD..][..RECORD];
                for i in 0..PASS {
                    let bytes = &record[i * BLOCK..(i + 1) * BLOCK];
                    let (scale, sum) = (
                        f32_at(record, SCALES_AT + 4 * i),
                        f32_at(record, SUMS_AT + 4 * i),
                    );
                    let offset =
                        i32::from_le_bytes(record[OFFSETS_AT + 4 * i..][..4].try_into().unwrap());
                    let row = p * PASS + i;
                    if row >= n {
                        assert!(
                            bytes.iter().all(|&b| b == 0) && (scale, sum, offset) == (0.0, 0.0, 0)
                        );
                        continue;
                    }
                    let at = row * blocks + k;
                    let q = &rows.q[at * BLOCK..(at + 1) * BLOCK];
                    assert!(
                        bytes.iter().zip(q).all(|(&b, &q)| b == q as u8),
                        "row {row} block {k}"
                    );
                    assert_eq!((scale, sum), (rows.scales[at], rows.sums[at]));
                    assert_eq!(offset, 128 * q.iter().map(|&q| q as i32).sum::<i32>());
                }
            }
        }
        // A matrix of no columns (a malformed file) rounds nothing, without dividing by zero.
        // SAFETY: as above.
        assert!(unsafe { PassActivations::round(&[], 3, 0) }
            .records
            .is_empty());
    }
}
