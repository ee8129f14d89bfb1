//! AVX-512 VNNI kernel over matrices re-laid out at load in bands of 16 rows ([`Bands`]).
//!
//! GGUF stores a matrix row by row, each block's f16 scales before its weight bytes, and a
//! 4-bit block holds elements `j` and `j + 16` in one byte. A kernel that multiplies a row at
//! a time ends each dot product with a horizontal sum of a register's lanes, and spends most
//! of its instructions on shuffles that bring the bytes into order (`perf`: a 4 × 4 register
//! tile spent a third of its time summing lanes at SmolLM2's 576 columns).
//!
//! [`Bands`] interleaves 16 rows instead: for each block of 32 weights, lane `j` of a 512-bit
//! register holds four consecutive weights of row `j`. `vpdpbusd` against four activation
//! bytes broadcast to every lane then adds four products to each of 16 rows at once, eight
//! instructions per block for 16 rows, and the 16 lanes of the result *are* the 16 rows'
//! outputs: no lane sums, no shuffles.
//!
//! Every block type reaches the instruction in the canonical form of
//! [`formats`](super::formats), `w = s_h (q − o) + m` with `q` unsigned: the low nibbles of
//! `q` packed two to a byte as the file packs them, the fifth and sixth bits (Q5_0, Q5_1,
//! Q5_K, Q6_K) as one 64-bit mask per register, added with a masked byte add; Q8_0 as bytes
//! `q + 128`. A band keeps a file block's f16 header and the k-quants' 6- or 8-bit
//! sub-block scales as stored: a band of Q4_K reads 4.6 bits per weight (the file: 4.5), Q5_0
//! 5.5 (5.5), Q6_K 6.6 (6.6). The offset `o · Σ a` is subtracted in integers (in floating
//! point the two large terms cancelled and left errors of ~1e-4 on outputs of ~30).
//!
//! One kernel serves every batch size, eight activation rows per pass over a band's blocks:
//! a row's result is computed with the same instructions in the same order whatever else is
//! in the batch, so a sequence decodes the same alone or in a batch, and a prompt's rows equal
//! the decode steps that would compute them.

#![allow(clippy::needless_range_loop)] // `i`, `u` pick accumulators and registers

use super::formats::{unpack_group, Combine, Format, Header, Unpacked};
#[cfg(doc)]
use super::ByteActivations;
use super::{round_block_avx512, BLOCK, ROWS_PER_PASS as PASS};
use crate::layers::cpu::team;
use std::arch::x86_64::*;
use std::mem::MaybeUninit;

/// Rows per band: one per 32-bit lane of a 512-bit register.
pub(super) const BAND: usize = 16;

/// Where each part of a band's records lies, for one block type.
#[derive(Debug, Clone, Copy)]
struct Shape {
    /// A file block's header for 16 rows: `d` (16 f16), then `m` / `dmin` (16 f16).
    header: usize,
    /// A block of 32 for 16 rows: weights, high-bit masks, sub-block scales.
    block: usize,
    /// Offsets inside a block's record.
    masks_at: usize,
    subs_at: usize,
    /// A file block for 16 rows: header and `group_blocks` blocks.
    group: usize,
}

impl Shape {
    const fn of(format: Format) -> Shape {
        let header = BAND * 2 * format.header_halves();
        let weights = if format.nibbles() { 4 * 64 } else { 8 * 64 };
        let masks_at = weights;
        let subs_at = masks_at + 64 * format.high_bits();
        let block = subs_at + BAND * format.sub_scales();
        Shape {
            header,
            block,
            masks_at,
            subs_at,
            group: header + format.group_blocks() * block,
        }
    }
}

/// A matrix in bands of [`BAND`] rows (the last padded with zero rows). Per band and file
/// block, a record: the header (16 rows' f16 `d`, then their `m` or `dmin`), then per block
/// of 32 weights:
/// - the weight bytes, 64 per register: register `u` holds bytes `4u..4u + 4` of each row's
///   packed block, row `j` in lane `j` (nibbles: 4 registers, the low nibbles elements
///   `4u..4u + 4`, the high ones `16 + 4u..`; Q8_0: 8 registers of `q + 128`);
/// - per high bit, 8 masks of 64 bits, mask `v` bit `4j + b` that bit of the weight that
///   byte `b` of lane `j` of register `v` holds (registers 4..8: the high nibbles);
/// - the 16 rows' first sub-block scales, then their second.
#[derive(Debug)]
pub(super) struct Bands {
    format: Format,
    rows: usize,
    /// File blocks per row.
    groups: usize,
    data: Vec<u8>,
}

impl Bands {
    /// `data`: `rows` rows of `groups` file blocks in GGUF's layout, read on the team's
    /// threads a band per task.
    pub(super) fn new(format: Format, rows: usize, groups: usize, data: &[u8]) -> Bands {
        let shape = Shape::of(format);
        let row_bytes = groups * format.file_block_bytes();
        let band_bytes = groups * shape.group;
        let bands = rows.div_ceil(BAND);
        let out = team::collect_chunks(bands * band_bytes, band_bytes, |band, out| {
            // Every byte is written: zero first (padding rows, unused header halves).
            for b in out.iter_mut() {
                b.write(0);
            }
            // SAFETY: all initialised just above.
            let out = unsafe { &mut *(out as *mut [MaybeUninit<u8>] as *mut [u8]) };
            let mut header: Header = [0; 2];
            let mut blocks = [Unpacked::default(); 8];
            for lane in 0..BAND.min(rows - band * BAND) {
                let row = &data[(band * BAND + lane) * row_bytes..][..row_bytes];
                for (g, file_block) in row.chunks_exact(format.file_block_bytes()).enumerate() {
                    unpack_group(format, file_block, &mut header, &mut blocks);
                    let record = &mut out[g * shape.group..][..shape.group];
                    for h in 0..format.header_halves() {
                        record[h * 2 * BAND + 2 * lane..][..2]
                            .copy_from_slice(&header[h].to_le_bytes());
                    }
                    for (k, block) in blocks[..format.group_blocks()].iter().enumerate() {
                        let dst = &mut record[shape.header + k * shape.block..][..shape.block];
                        place_block(format, &shape, lane, block, dst);
                    }
                }
            }
        });
        Bands {
            format,
            rows,
            groups,
            data: out,
        }
    }

    /// Matrices of one format and width stacked row after row, when every matrix but the
    /// last fills its last band: their bands in order (`None` otherwise).
    pub(super) fn stack(parts: &[&Bands]) -> Option<Bands> {
        let (first, rest) = parts.split_first()?;
        let (format, groups) = (first.format, first.groups);
        if rest
            .iter()
            .any(|p| p.format != format || p.groups != groups)
            || parts[..parts.len() - 1]
                .iter()
                .any(|p| !p.rows.is_multiple_of(BAND))
        {
            return None;
        }
        let mut data = Vec::with_capacity(parts.iter().map(|p| p.data.len()).sum());
        for p in parts {
            data.extend_from_slice(&p.data);
        }
        Some(Bands {
            format,
            rows: parts.iter().map(|p| p.rows).sum(),
            groups,
            data,
        })
    }

    pub(super) fn rows(&self) -> usize {
        self.rows
    }

    pub(super) fn bands(&self) -> usize {
        self.rows.div_ceil(BAND)
    }

    /// Blocks of 32 per row.
    fn blocks(&self) -> usize {
        self.groups * self.format.group_blocks()
    }
}

/// Writes row `lane`'s block into its band's block record `dst`.
fn place_block(format: Format, shape: &Shape, lane: usize, block: &Unpacked, dst: &mut [u8]) {
    let q = &block.q;
    if format.nibbles() {
        for u in 0..4 {
            for b in 0..4 {
                let (low, high) = (q[4 * u + b] & 0x0f, q[16 + 4 * u + b] & 0x0f);
                dst[u * 64 + lane * 4 + b] = low | (high << 4);
            }
        }
    } else {
        for u in 0..8 {
            dst[u * 64 + lane * 4..][..4].copy_from_slice(&q[4 * u..4 * u + 4]);
        }
    }
    for bit in 0..format.high_bits() {
        for v in 0..8 {
            let at = shape.masks_at + 64 * bit + 8 * v;
            let mut mask = u64::from_le_bytes(dst[at..at + 8].try_into().expect("8 bytes"));
            for b in 0..4 {
                let element = if v < 4 {
                    4 * v + b
                } else {
                    16 + 4 * (v - 4) + b
                };
                let set = (q[element] >> (4 + bit)) & 1;
                mask |= (set as u64) << (4 * lane + b);
            }
            dst[at..at + 8].copy_from_slice(&mask.to_le_bytes());
        }
    }
    for s in 0..format.sub_scales() {
        dst[shape.subs_at + s * BAND + lane] = block.sub[s];
    }
}

/// Where results go: `out[i · stride + r]` for activation row `i` and weight row `r`.
#[derive(Clone, Copy)]
pub(super) struct Output {
    pub(super) at: *mut f32,
    pub(super) stride: usize,
}

/// Activation rows rounded for the kernel: per pass of [`ROWS_PER_PASS`](super::ROWS_PER_PASS)
/// rows and per block, one record of the rows' 32 bytes each, then their scales `e`, their
/// `e Σ q`, their `Σ q` and their `Σ q` over the block's first 16. Every value a pass reads
/// for a block then lies at a fixed distance from one pointer that advances a record per
/// block: the compiler addresses each with base plus constant, where row-major activations
/// needed base plus index plus constant, which Intel cores split into two micro-operations in
/// every `vpdpbusd` that reads memory.
pub(super) struct PassActivations {
    blocks: usize,
    records: Vec<u8>,
}

const SCALES_AT: usize = PASS * BLOCK;
const SUMS_AT: usize = SCALES_AT + 4 * PASS;
const QSUMS_AT: usize = SUMS_AT + 4 * PASS;
const LOW_QSUMS_AT: usize = QSUMS_AT + 4 * PASS;
const RECORD: usize = LOW_QSUMS_AT + 4 * PASS;

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

    /// Bytes of one pass's records.
    pub(super) fn pass_bytes(&self) -> usize {
        self.blocks * RECORD
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
            let (scale, sum, low) = if i < present {
                let x = rows.as_ptr().add(i * cols + k * BLOCK);
                round_block_avx512(x, record.add(i * BLOCK) as *mut i8)
            } else {
                std::ptr::write_bytes(record.add(i * BLOCK), 0, BLOCK);
                (0.0, 0, 0)
            };
            let put = |at: usize, bytes: [u8; 4]| {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), record.add(at + 4 * i), 4)
            };
            put(SCALES_AT, scale.to_le_bytes());
            put(SUMS_AT, (scale * sum as f32).to_le_bytes());
            put(QSUMS_AT, sum.to_le_bytes());
            put(LOW_QSUMS_AT, low.to_le_bytes());
        }
    }
}

/// `out[i · stride + r] = w_r · x_i` for the rows `r` of band `band` and activation rows
/// `pass · PASS..pass · PASS + A`.
///
/// # Safety
/// AVX-512 F/BW/DQ/VL/VNNI and F16C; `band < w.bands()`, `a` holds pass `pass` of the
/// matrix's blocks; `out` valid for writes at those offsets.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,f16c")]
pub(super) unsafe fn band<const A: usize>(
    w: &Bands,
    band: usize,
    a: &PassActivations,
    pass: usize,
    out: Output,
) {
    debug_assert!(band < w.bands() && a.blocks == w.blocks() && A <= PASS);
    debug_assert!(a.records.len() >= (pass + 1) * a.blocks * RECORD);
    // The format a constant in each copy of the loop.
    match w.format {
        Format::Q4_0 => band_of::<A>(Format::Q4_0, w, band, a, pass, out),
        Format::Q4_1 => band_of::<A>(Format::Q4_1, w, band, a, pass, out),
        Format::Q5_0 => band_of::<A>(Format::Q5_0, w, band, a, pass, out),
        Format::Q5_1 => band_of::<A>(Format::Q5_1, w, band, a, pass, out),
        Format::Q8_0 => band_of::<A>(Format::Q8_0, w, band, a, pass, out),
        Format::Q4K => band_of::<A>(Format::Q4K, w, band, a, pass, out),
        Format::Q5K => band_of::<A>(Format::Q5K, w, band, a, pass, out),
        Format::Q6K => band_of::<A>(Format::Q6K, w, band, a, pass, out),
    }
}

/// A block's weight registers from its record at `p`: `[u]` for `u < 4` elements
/// `4u..4u + 4` of each row, `[4 + u]` elements `16 + 4u..`, as unsigned bytes with their
/// high bits.
#[inline(always)]
unsafe fn weights(format: Format, shape: &Shape, p: *const u8) -> [__m512i; 8] {
    let mut ws = [_mm512_setzero_si512(); 8];
    if format.nibbles() {
        let low = _mm512_set1_epi8(0x0f);
        for u in 0..4 {
            let nibbles = _mm512_loadu_si512(p.add(64 * u) as *const _);
            ws[u] = _mm512_and_si512(nibbles, low);
            ws[4 + u] = _mm512_and_si512(_mm512_srli_epi16::<4>(nibbles), low);
        }
        for bit in 0..format.high_bits() {
            let value = _mm512_set1_epi8(16 << bit);
            let masks = p.add(shape.masks_at + 64 * bit) as *const u64;
            for v in 0..8 {
                let mask: __mmask64 = std::ptr::read_unaligned(masks.add(v));
                ws[v] = _mm512_mask_add_epi8(ws[v], mask, ws[v], value);
            }
        }
    } else {
        for u in 0..8 {
            ws[u] = _mm512_loadu_si512(p.add(64 * u) as *const _);
        }
    }
    ws
}

/// 16 small integers at `p` as f32: unsigned (Q4_K, Q5_K) or signed (Q6_K).
#[inline(always)]
unsafe fn small_scales(format: Format, p: *const u8) -> __m512 {
    let bytes = _mm_loadu_si128(p as *const __m128i);
    _mm512_cvtepi32_ps(match format {
        Format::Q6K => _mm512_cvtepi8_epi32(bytes),
        _ => _mm512_cvtepu8_epi32(bytes),
    })
}

/// A block's scales: `s` of its two halves and its minimum, per lane.
#[derive(Clone, Copy)]
struct Scales {
    low: __m512,
    high: __m512,
    minimum: __m512,
}

#[inline(always)]
unsafe fn block_scales(
    format: Format,
    shape: &Shape,
    d: __m512,
    neg_second: __m512,
    p: *const u8,
) -> Scales {
    let zero = _mm512_setzero_ps();
    match format {
        Format::Q4_0 | Format::Q5_0 | Format::Q8_0 => Scales {
            low: d,
            high: d,
            minimum: zero,
        },
        // `neg_second` is `−m`: the minimum is `m`.
        Format::Q4_1 | Format::Q5_1 => Scales {
            low: d,
            high: d,
            minimum: _mm512_sub_ps(zero, neg_second),
        },
        Format::Q4K | Format::Q5K => {
            let s = _mm512_mul_ps(d, small_scales(format, p.add(shape.subs_at)));
            let m = small_scales(format, p.add(shape.subs_at + BAND));
            Scales {
                low: s,
                high: s,
                minimum: _mm512_mul_ps(neg_second, m),
            }
        }
        Format::Q6K => Scales {
            low: _mm512_mul_ps(d, small_scales(format, p.add(shape.subs_at))),
            high: _mm512_mul_ps(d, small_scales(format, p.add(shape.subs_at + BAND))),
            minimum: zero,
        },
    }
}

/// `2^shift · v` for the offsets' shifts.
#[inline(always)]
unsafe fn shifted(v: __m512i, shift: u32) -> __m512i {
    match shift {
        3 => _mm512_slli_epi32::<3>(v),
        4 => _mm512_slli_epi32::<4>(v),
        5 => _mm512_slli_epi32::<5>(v),
        7 => _mm512_slli_epi32::<7>(v),
        _ => _mm512_mullo_epi32(v, _mm512_set1_epi32(1 << shift)),
    }
}

/// Adds activation row `i`'s products with block `ws` to `acc`; `x` is the block's record of
/// [`PassActivations`]. Called once per row with a constant `i`, so that every accumulator is
/// a register and every address a constant distance from `x`.
#[inline(always)]
unsafe fn row_block(
    format: Format,
    ws: &[__m512i; 8],
    s: Scales,
    x: *const u8,
    i: usize,
    acc: &mut __m512,
) {
    let bytes = x.add(i * BLOCK);
    let four = |offset: usize| {
        _mm512_set1_epi32(std::ptr::read_unaligned(bytes.add(offset) as *const i32))
    };
    let float =
        |at: usize| _mm512_set1_ps(std::ptr::read_unaligned(x.add(at + 4 * i) as *const f32));
    let int =
        |at: usize| _mm512_set1_epi32(std::ptr::read_unaligned(x.add(at + 4 * i) as *const i32));
    // Elements 0..16 and 16..32 in two chains (integers: exact).
    let (mut low, mut high) = (_mm512_setzero_si512(), _mm512_setzero_si512());
    for u in 0..4 {
        low = _mm512_dpbusd_epi32(low, ws[u], four(4 * u));
        high = _mm512_dpbusd_epi32(high, ws[4 + u], four(16 + 4 * u));
    }
    let e = float(SCALES_AT);
    match format.combine() {
        Combine::Minimum => {
            let dot = _mm512_cvtepi32_ps(_mm512_add_epi32(low, high));
            *acc = _mm512_fmadd_ps(dot, _mm512_mul_ps(s.low, e), *acc);
            *acc = _mm512_fmadd_ps(s.minimum, float(SUMS_AT), *acc);
        }
        Combine::Offset(shift) => {
            let offset = shifted(int(QSUMS_AT), shift);
            let dot = _mm512_sub_epi32(_mm512_add_epi32(low, high), offset);
            *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(s.low, e), *acc);
        }
        Combine::Halves => {
            let (all, first) = (int(QSUMS_AT), int(LOW_QSUMS_AT));
            let low = _mm512_sub_epi32(low, shifted(first, 5));
            let high = _mm512_sub_epi32(high, shifted(_mm512_sub_epi32(all, first), 5));
            *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(low), _mm512_mul_ps(s.low, e), *acc);
            *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(high), _mm512_mul_ps(s.high, e), *acc);
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
    let shape = Shape::of(format);
    let group_blocks = format.group_blocks();
    let base = w.data.as_ptr().add(band * w.groups * shape.group);
    let acts = a.records.as_ptr().add(pass * a.blocks * RECORD);
    let mut acc = [_mm512_setzero_ps(); A];
    for g in 0..w.groups {
        let p = base.add(g * shape.group);
        let d = _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i));
        let neg_second = if format.header_halves() == 2 {
            let second = _mm512_cvtph_ps(_mm256_loadu_si256(p.add(2 * BAND) as *const __m256i));
            _mm512_sub_ps(_mm512_setzero_ps(), second)
        } else {
            _mm512_setzero_ps()
        };
        for k in 0..group_blocks {
            let block = p.add(shape.header + k * shape.block);
            let x = acts.add((g * group_blocks + k) * RECORD);
            let ws = weights(format, &shape, block);
            let s = block_scales(format, &shape, d, neg_second, block);
            macro_rules! rows {
                ($($i:literal)*) => {$(
                    if $i < A {
                        row_block(format, &ws, s, x, $i, &mut acc[$i]);
                    }
                )*};
            }
            const _: () = assert!(PASS == 8);
            rows!(0 1 2 3 4 5 6 7);
        }
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
                    let int_at = |at: usize| {
                        i32::from_le_bytes(record[at + 4 * i..][..4].try_into().unwrap())
                    };
                    let (qsum, low) = (int_at(QSUMS_AT), int_at(LOW_QSUMS_AT));
                    let row = p * PASS + i;
                    if row >= n {
                        assert!(
                            bytes.iter().all(|&b| b == 0)
                                && (scale, sum, qsum, low) == (0.0, 0.0, 0, 0)
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
                    assert_eq!(qsum, q.iter().map(|&q| q as i32).sum::<i32>());
                    assert_eq!(low, q[..16].iter().map(|&q| q as i32).sum::<i32>());
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
