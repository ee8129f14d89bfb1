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
//! a scalar loop otherwise; weight rows are split across rayon's threads. A decode step (under
//! eight rows) unpacks each weight row in registers for its few activation rows; prompts and
//! batches go through register tiles of 4 weight rows × 4 activation rows over weight rows
//! unpacked once per thread (`QuantMatrix::tiled_512`), which took a 128-token prompt of
//! SmolLM2 from 160 to about 260 tokens/s. Both compute each product with the same
//! instructions in the same order: a row's result does not depend on the batch it is in.
//!
//! Dequantizing the matrix for one f32 GEMM materialises every matrix as f32 on every call:
//! 538 MB of transient memory for SmolLM2, which under a server's continuous batching cost
//! more than it saved (perf: page clearing and transposes) and grew the resident set by 40%.

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
}

impl ByteActivations {
    /// Rows of `cols` values each; rows are rounded on rayon's threads when there are many.
    fn quantize(xs: &[f32], cols: usize) -> Self {
        let blocks = cols / BLOCK;
        let total = xs.len() / BLOCK;
        let mut acts = ByteActivations {
            blocks,
            q: vec![0i8; xs.len()],
            scales: vec![0f32; total * 8],
            sums: vec![0f32; total],
        };
        let rows_per_task = 16;
        xs.par_chunks(rows_per_task * cols)
            .zip(acts.q.par_chunks_mut(rows_per_task * cols))
            .zip(acts.scales.par_chunks_mut(rows_per_task * blocks * 8))
            .zip(acts.sums.par_chunks_mut(rows_per_task * blocks))
            .for_each(|(((x, q), scales), sums)| round_blocks(x, q, scales, sums));
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

/// Rounds each block of 32 of `xs` (compiled once per instruction set, so that the rounding
/// is one instruction instead of a libm call per value).
fn round_blocks(xs: &[f32], q: &mut [i8], scales: &mut [f32], sums: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        /// The same rounding, a block in two registers (`vcvtps2dq` rounds ties to even).
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512(xs: &[f32], q: &mut [i8], scales: &mut [f32], sums: &mut [f32]) {
            use std::arch::x86_64::*;
            let blocks = sums.len().min(xs.len() / BLOCK);
            assert!(q.len() >= blocks * BLOCK && scales.len() >= blocks * 8);
            for b in 0..blocks {
                let x0 = _mm512_loadu_ps(xs.as_ptr().add(b * BLOCK));
                let x1 = _mm512_loadu_ps(xs.as_ptr().add(b * BLOCK + 16));
                let amax =
                    _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1)));
                let scale = amax / 127.0;
                let inverse = _mm512_set1_ps(if scale > 0.0 { 1.0 / scale } else { 0.0 });
                let q0 = _mm512_cvtps_epi32(_mm512_mul_ps(x0, inverse));
                let q1 = _mm512_cvtps_epi32(_mm512_mul_ps(x1, inverse));
                let out = q.as_mut_ptr().add(b * BLOCK) as *mut __m128i;
                _mm_storeu_si128(out, _mm512_cvtepi32_epi8(q0));
                _mm_storeu_si128(out.add(1), _mm512_cvtepi32_epi8(q1));
                let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
                _mm256_storeu_ps(scales.as_mut_ptr().add(b * 8), _mm256_set1_ps(scale));
                *sums.get_unchecked_mut(b) = scale * sum as f32;
            }
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(xs: &[f32], q: &mut [i8], scales: &mut [f32], sums: &mut [f32]) {
            round_blocks_with(xs, q, scales, sums)
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the features the function was compiled for.
            return unsafe { avx512(xs, q, scales, sums) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: as above.
            return unsafe { avx2(xs, q, scales, sums) };
        }
    }
    round_blocks_with(xs, q, scales, sums)
}

#[inline(always)]
fn round_blocks_with(xs: &[f32], q: &mut [i8], scales: &mut [f32], sums: &mut [f32]) {
    for (((x, qb), scale8), sum_out) in xs
        .chunks_exact(BLOCK)
        .zip(q.chunks_exact_mut(BLOCK))
        .zip(scales.chunks_exact_mut(8))
        .zip(sums.iter_mut())
    {
        let x: &[f32; BLOCK] = x.try_into().expect("a block");
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = amax / 127.0;
        let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in qb.iter_mut().zip(x) {
            // Ties to even, as llama.cpp's SIMD `quantize_row_q8_1` (`_mm256_round_ps`).
            *q = (v * inverse).round_ties_even() as i8;
            sum += *q as i32;
        }
        scale8.fill(scale);
        *sum_out = scale * sum as f32;
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
        let kernel = Kernel::detect();
        #[cfg(target_arch = "x86_64")]
        if kernel == Kernel::Vnni512 && n >= TILED_FROM_ROWS {
            let out = self.tiled_512(&ByteActivations::quantize(&xs, cols), n);
            return Ok(Tensor::from_vec(out, (n, self.rows), &Device::Cpu)?);
        }
        let passes: Vec<ByteActivations> = xs
            .chunks(ROWS_PER_PASS * cols)
            .map(|rows| ByteActivations::quantize(rows, cols))
            .collect();
        let row_bytes = cols / BLOCK * self.format.block_bytes();
        let format = self.format;
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

    /// `[n, rows]`: every weight row against every activation row in register tiles of
    /// [`vnni512::TILE_WEIGHTS`] × [`vnni512::TILE_ACTIVATIONS`] products. Each thread unpacks
    /// [`TILED_CHUNK`] weight rows once (nibbles to bytes, f16 scales to f32) for all `n`
    /// activation rows, so that an activation block loaded into a register meets four weight
    /// rows and a weight block four activation rows; the pass kernel above re-unpacks a
    /// weight row for every eight activation rows and reloads each activation block per weight
    /// row, which made a 128-token prompt stream its activations from L2 once per weight row.
    #[cfg(target_arch = "x86_64")]
    fn tiled_512(&self, acts: &ByteActivations, n: usize) -> Vec<f32> {
        /// The output, written by every thread at its own columns.
        struct Shared(*mut f32);
        // SAFETY: threads write disjoint columns (their own weight rows) of the output.
        unsafe impl Sync for Shared {}
        let row_bytes = acts.blocks * self.format.block_bytes();
        let mut out = vec![0f32; n * self.rows];
        let shared = Shared(out.as_mut_ptr());
        let chunks = self.rows.div_ceil(TILED_CHUNK);
        let scratch = || (Vec::new(), vnni512::Unpacked::default());
        (0..chunks)
            .into_par_iter()
            .for_each_init(scratch, |(weights, unpacked), c| {
                let first = c * TILED_CHUNK;
                weights.clear();
                weights.extend(
                    (first..self.rows.min(first + TILED_CHUNK))
                        .map(|r| &self.data[r * row_bytes..(r + 1) * row_bytes]),
                );
                let shared = &shared;
                // SAFETY: `forward` chose this path after Kernel::detect saw AVX-512 VNNI; the
                // chunk's columns `first..first + weights.len()` of the `[n, rows]` output are
                // written by this task only.
                unsafe {
                    vnni512::tiles(
                        self.format,
                        weights,
                        acts,
                        n,
                        shared.0.add(first),
                        self.rows,
                        unpacked,
                    )
                };
            });
        out
    }
}

/// Activation rows from which `forward` multiplies in register tiles ([`QuantMatrix::tiled_512`])
/// instead of passes of eight; both compute every product with the same instructions in the
/// same order, so a row's result does not depend on the batch it came in.
const TILED_FROM_ROWS: usize = 8;

/// Weight rows a thread of the tiled kernel unpacks at once.
const TILED_CHUNK: usize = 16;

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
            ($m:ident :: $f:ident, $format:expr) => {
                match out.len() {
                    1 => $m::$f::<1>($format, w, acts, out),
                    2 => $m::$f::<2>($format, w, acts, out),
                    3 => $m::$f::<3>($format, w, acts, out),
                    4 => $m::$f::<4>($format, w, acts, out),
                    5 => $m::$f::<5>($format, w, acts, out),
                    6 => $m::$f::<6>($format, w, acts, out),
                    7 => $m::$f::<7>($format, w, acts, out),
                    _ => $m::$f::<8>($format, w, acts, out),
                }
            };
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
                (Kernel::Vnni512, _) => return by_rows!(vnni512::rows, format),
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
///
/// Both formats reach the instruction as unsigned bytes with a per-block offset: Q4_1's
/// nibbles `q` (weight `d q + m`), and Q8_0's signed bytes plus 128 (weight `d (u − 128)`,
/// i.e. `m = −128 d`). The offsets' term `Σ_b m_b · e_b Σ a` is summed apart, 16 blocks per
/// multiply-add, so a product costs four instructions: `vpdpbusd`, a conversion, a multiply
/// of the scales and a multiply-add.
///
/// Two kernels share every instruction on a product: `rows` (one weight row, up to eight
/// activation rows, the weight unpacked in registers: decoding) and `tiles` (weight rows
/// unpacked once into a buffer, tiles of 4 × 4: prompts and batches). Their results are equal
/// bit for bit, so a sequence decodes the same alone or in a batch.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)] // `i` picks an accumulator and an activation row's offset
pub(super) mod vnni512 {
    use super::{ByteActivations, Format, BLOCK};
    use std::arch::x86_64::*;

    /// Weight rows of one register tile.
    pub(super) const TILE_WEIGHTS: usize = 4;
    /// Activation rows of one register tile.
    pub(super) const TILE_ACTIVATIONS: usize = 4;

    /// Blocks whose scales one gather reads (a 512-bit register of f32).
    const CHUNK: usize = 16;

    #[inline(always)]
    fn lanes_up_to(count: usize) -> __mmask16 {
        if count >= 16 {
            0xffff
        } else {
            (1u16 << count) - 1
        }
    }

    /// Where 16 blocks' first two 16-bit words lie among the blocks' bytes loaded into
    /// registers two by two (64 words per pair of registers): per pair, the `vpermt2w`
    /// indices that move block `j`'s words to 32-bit lane `j`, and the mask of the lanes
    /// whose first word lies in that pair. (A block's words 2 and 3 may cross into the next
    /// pair: only Q8_0's last block does, whose second word is not used.)
    struct HeadPermutes {
        index: [[u16; 32]; 5],
        lanes: [u32; 5],
        pairs: usize,
    }

    const fn head_permutes(block_bytes: usize) -> HeadPermutes {
        let mut p = HeadPermutes {
            index: [[0; 32]; 5],
            lanes: [0; 5],
            pairs: 0,
        };
        let mut j = 0;
        while j < CHUNK {
            let word = j * block_bytes / 2;
            let pair = word / 64;
            p.index[pair][2 * j] = (word % 64) as u16;
            p.index[pair][2 * j + 1] = ((word + 1) % 64) as u16;
            p.lanes[pair] |= 0b11 << (2 * j);
            if pair + 1 > p.pairs {
                p.pairs = pair + 1;
            }
            j += 1;
        }
        p
    }

    const Q4_1_HEADS: HeadPermutes = head_permutes(20);
    const Q8_0_HEADS: HeadPermutes = head_permutes(34);

    /// `d` and `m` of `count` (≤ 16) consecutive blocks from `p`, one block per lane (the
    /// rest zero), from the first 4 bytes of each block.
    ///
    /// Why not `vpgatherdd`: with the Gather Data Sampling mitigation in microcode a gather
    /// stalls for tens of cycles (`perf` put 40% of a decode step's kernel time on the
    /// instructions after it); whole-register loads and two-register word permutes do not.
    #[inline(always)]
    unsafe fn block_scales(format: Format, p: *const u8, count: usize) -> (__m512, __m512) {
        let (bytes, table) = match format {
            Format::Q4_1 => (20, &Q4_1_HEADS),
            Format::Q8_0 => (34, &Q8_0_HEADS),
        };
        let span = count * bytes;
        // Register `r` of the blocks' bytes (zero past the `count` blocks: no read beyond).
        let register = |r: usize| -> __m512i {
            let start = 64 * r;
            if start >= span {
                return _mm512_setzero_si512();
            }
            let valid = (span - start).min(64);
            let mask = if valid == 64 {
                u64::MAX
            } else {
                (1u64 << valid) - 1
            };
            _mm512_maskz_loadu_epi8(mask, p.add(start) as *const i8)
        };
        let mut heads = _mm512_setzero_si512();
        for k in 0..table.pairs {
            let index = _mm512_loadu_si512(table.index[k].as_ptr() as *const _);
            let picked = _mm512_permutex2var_epi16(register(2 * k), index, register(2 * k + 1));
            heads = _mm512_mask_blend_epi16(table.lanes[k], heads, picked);
        }
        // The f16 in the low half of each lane (`d`); Q4_1's `m` in the high half.
        let d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(heads));
        let m = match format {
            Format::Q4_1 => _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(heads))),
            Format::Q8_0 => _mm512_mul_ps(d, _mm512_set1_ps(-128.0)),
        };
        (d, m)
    }

    /// `[v_2k × 8, v_2k+1 × 8]`: block pair `k`'s scales, one per 8 lanes of its dot products.
    #[inline(always)]
    unsafe fn pair_halves(v: __m512, k: usize) -> __m512 {
        let index = _mm512_add_epi32(
            _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1),
            _mm512_set1_epi32(2 * k as i32),
        );
        _mm512_permutexvar_ps(index, v)
    }

    /// Blocks `b` and `b + 1` at `p0` as 64 unsigned bytes, block `b`'s 32 first, in element
    /// order, as the activations lie.
    #[inline(always)]
    unsafe fn weight_bytes(format: Format, p0: *const u8) -> __m512i {
        match format {
            Format::Q4_1 => {
                let nibbles = _mm256_set_m128i(
                    _mm_loadu_si128(p0.add(24) as *const __m128i),
                    _mm_loadu_si128(p0.add(4) as *const __m128i),
                );
                let mask = _mm256_set1_epi8(0x0f);
                let lo = _mm256_and_si256(nibbles, mask); // [0..16 of b, 0..16 of b+1]
                let hi = _mm256_and_si256(_mm256_srli_epi16(nibbles, 4), mask); // [16..32, ..]
                let lanes = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
                // 128-bit lanes [lo b, lo b+1, hi b, hi b+1] → [lo b, hi b, lo b+1, hi b+1]
                _mm512_shuffle_i64x2(lanes, lanes, 0b11_01_10_00)
            }
            Format::Q8_0 => {
                let q = _mm512_inserti64x4(
                    _mm512_castsi256_si512(_mm256_loadu_si256(p0.add(2) as *const __m256i)),
                    _mm256_loadu_si256(p0.add(36) as *const __m256i),
                    1,
                );
                // q + 128 as an unsigned byte: the sign bit flipped.
                _mm512_xor_si512(q, _mm512_set1_epi8(-128))
            }
        }
    }

    /// Activation row `i`'s `scale · Σ q` of blocks `b..b + count` (the rest zero).
    #[inline(always)]
    unsafe fn sums(a: &ByteActivations, i: usize, b: usize, count: usize) -> __m512 {
        _mm512_maskz_loadu_ps(lanes_up_to(count), a.sums.as_ptr().add(i * a.blocks + b))
    }

    /// Activation row `i`'s bytes and scales of the block pair starting at block `b`.
    #[inline(always)]
    unsafe fn activation(a: &ByteActivations, i: usize, b: usize) -> (__m512i, __m512) {
        let at = i * a.blocks + b;
        (
            _mm512_loadu_si512(a.q.as_ptr().add(at * BLOCK) as *const _),
            _mm512_loadu_ps(a.scales.as_ptr().add(at * 8)),
        )
    }

    /// One product of a block pair added to `acc`: `d e Σ u a`.
    #[inline(always)]
    unsafe fn step(acc: __m512, u: __m512i, d: __m512, x: __m512i, e: __m512) -> __m512 {
        let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, x);
        _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(d, e), acc)
    }

    /// The last block of an odd count, added after the lanes are summed (scalar).
    unsafe fn odd_tail(format: Format, w: &[u8], a: &ByteActivations, i: usize) -> f32 {
        let (b, cols) = (a.blocks - 1, a.blocks * BLOCK);
        let row = a.row(i);
        let tail = super::ActivationRow {
            q: &row.q[b * BLOCK..cols],
            scales: &row.scales[b * 8..],
            sums: &row.sums[b..],
        };
        match format {
            Format::Q4_1 => super::q4_1_scalar(&w[b * 20..], tail),
            Format::Q8_0 => super::q8_0_scalar(&w[b * 34..], tail),
        }
    }

    /// `out[i] = w · x_i` for activation rows `0..N`.
    ///
    /// # Safety
    /// AVX-512 F/BW/DQ/VNNI and F16C; `w` holds `a.blocks` blocks, `a` at least `N` rows.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vnni,f16c")]
    pub(super) unsafe fn rows<const N: usize>(
        format: Format,
        w: &[u8],
        a: &ByteActivations,
        out: &mut [f32],
    ) {
        // The format a constant in each copy of the loop.
        match format {
            Format::Q4_1 => rows_of::<N>(Format::Q4_1, w, a, out),
            Format::Q8_0 => rows_of::<N>(Format::Q8_0, w, a, out),
        }
    }

    #[inline(always)]
    unsafe fn rows_of<const N: usize>(
        format: Format,
        w: &[u8],
        a: &ByteActivations,
        out: &mut [f32],
    ) {
        let (paired, bytes) = (a.blocks / 2 * 2, format.block_bytes());
        let mut acc = [_mm512_setzero_ps(); N];
        let mut offsets = [_mm512_setzero_ps(); N];
        for first in (0..paired).step_by(CHUNK) {
            let count = CHUNK.min(paired - first);
            let (d, m) = block_scales(format, w.as_ptr().add(first * bytes), count);
            for i in 0..N {
                offsets[i] = _mm512_fmadd_ps(m, sums(a, i, first, count), offsets[i]);
            }
            for k in 0..count / 2 {
                let b = first + 2 * k;
                let u = weight_bytes(format, w.as_ptr().add(b * bytes));
                let d = pair_halves(d, k);
                for i in 0..N {
                    let (x, e) = activation(a, i, b);
                    acc[i] = step(acc[i], u, d, x, e);
                }
            }
        }
        for (i, o) in out.iter_mut().enumerate().take(N) {
            *o = sum_lanes(_mm512_add_ps(acc[i], offsets[i]));
            if a.blocks % 2 == 1 {
                *o += odd_tail(format, w, a, i);
            }
        }
    }

    /// Weight rows unpacked for [`tiles`]: `[rows, pairs]` of 64 unsigned weight bytes and
    /// `d` halves, and `[rows, chunks of 16 blocks]` of the blocks' offsets `m`. A thread
    /// keeps one and refills it for each of its chunks of weight rows.
    #[derive(Default)]
    pub(super) struct Unpacked {
        pairs: usize,
        chunks: usize,
        u: Vec<__m512i>,
        d: Vec<__m512>,
        m: Vec<__m512>,
    }

    #[inline(always)]
    unsafe fn unpack(unpacked: &mut Unpacked, format: Format, weights: &[&[u8]], pairs: usize) {
        let (paired, bytes) = (2 * pairs, format.block_bytes());
        let chunks = paired.div_ceil(CHUNK);
        unpacked.pairs = pairs;
        unpacked.chunks = chunks;
        unpacked.u.clear();
        unpacked.d.clear();
        unpacked.m.clear();
        for w in weights {
            for first in (0..paired).step_by(CHUNK) {
                let count = CHUNK.min(paired - first);
                let (d, m) = block_scales(format, w.as_ptr().add(first * bytes), count);
                unpacked.m.push(m);
                for k in 0..count / 2 {
                    let p = w.as_ptr().add((first + 2 * k) * bytes);
                    unpacked.u.push(weight_bytes(format, p));
                    unpacked.d.push(pair_halves(d, k));
                }
            }
        }
    }

    /// `out[i · stride + c] = weights[c] · x_i` for every weight row `c` and activation row
    /// `i < n`.
    ///
    /// # Safety
    /// AVX-512 F/BW/DQ/VNNI and F16C; `out` valid for writes at those offsets; each weight
    /// row holds `a.blocks` blocks.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vnni,f16c")]
    pub(super) unsafe fn tiles(
        format: Format,
        weights: &[&[u8]],
        a: &ByteActivations,
        n: usize,
        out: *mut f32,
        stride: usize,
        u: &mut Unpacked,
    ) {
        assert!(a.sums.len() >= n * a.blocks);
        match format {
            Format::Q4_1 => unpack(u, Format::Q4_1, weights, a.blocks / 2),
            Format::Q8_0 => unpack(u, Format::Q8_0, weights, a.blocks / 2),
        }
        let u = &*u;
        let dst = Tile { out, stride };
        for i in (0..n).step_by(TILE_ACTIVATIONS) {
            let acts = TILE_ACTIVATIONS.min(n - i);
            for c in (0..weights.len()).step_by(TILE_WEIGHTS) {
                let rows = TILE_WEIGHTS.min(weights.len() - c);
                match (rows, acts) {
                    (4, 4) => tile::<4, 4>(u, a, c, i, dst),
                    (4, 3) => tile::<4, 3>(u, a, c, i, dst),
                    (4, 2) => tile::<4, 2>(u, a, c, i, dst),
                    (4, _) => tile::<4, 1>(u, a, c, i, dst),
                    (3, 4) => tile::<3, 4>(u, a, c, i, dst),
                    (3, 3) => tile::<3, 3>(u, a, c, i, dst),
                    (3, 2) => tile::<3, 2>(u, a, c, i, dst),
                    (3, _) => tile::<3, 1>(u, a, c, i, dst),
                    (2, 4) => tile::<2, 4>(u, a, c, i, dst),
                    (2, 3) => tile::<2, 3>(u, a, c, i, dst),
                    (2, 2) => tile::<2, 2>(u, a, c, i, dst),
                    (2, _) => tile::<2, 1>(u, a, c, i, dst),
                    (_, 4) => tile::<1, 4>(u, a, c, i, dst),
                    (_, 3) => tile::<1, 3>(u, a, c, i, dst),
                    (_, 2) => tile::<1, 2>(u, a, c, i, dst),
                    (_, _) => tile::<1, 1>(u, a, c, i, dst),
                }
            }
        }
        if a.blocks % 2 == 1 {
            for (c, w) in weights.iter().enumerate() {
                for i in 0..n {
                    *out.add(i * stride + c) += odd_tail(format, w, a, i);
                }
            }
        }
    }

    /// Where a tile's results go: `out[i · stride + c]`.
    #[derive(Clone, Copy)]
    struct Tile {
        out: *mut f32,
        stride: usize,
    }

    /// Weight rows `first..first + W` times activation rows `act..act + A`.
    #[inline(always)]
    unsafe fn tile<const W: usize, const A: usize>(
        un: &Unpacked,
        a: &ByteActivations,
        first: usize,
        act: usize,
        dst: Tile,
    ) {
        let pairs = un.pairs;
        let mut acc = [[_mm512_setzero_ps(); A]; W];
        for pair in 0..pairs {
            let mut u = [_mm512_setzero_si512(); W];
            let mut d = [_mm512_setzero_ps(); W];
            for c in 0..W {
                let at = (first + c) * pairs + pair;
                u[c] = *un.u.get_unchecked(at);
                d[c] = *un.d.get_unchecked(at);
            }
            for i in 0..A {
                let (x, e) = activation(a, act + i, 2 * pair);
                for c in 0..W {
                    acc[c][i] = step(acc[c][i], u[c], d[c], x, e);
                }
            }
        }
        let paired = 2 * pairs;
        for c in 0..W {
            let mut offsets = [_mm512_setzero_ps(); A];
            for (chunk, b) in (0..paired).step_by(CHUNK).enumerate() {
                let m = *un.m.get_unchecked((first + c) * un.chunks + chunk);
                for i in 0..A {
                    let s = sums(a, act + i, b, CHUNK.min(paired - b));
                    offsets[i] = _mm512_fmadd_ps(m, s, offsets[i]);
                }
            }
            for i in 0..A {
                acc[c][i] = _mm512_add_ps(acc[c][i], offsets[i]);
            }
        }
        store_tile(&acc, dst, first, act);
    }

    /// Each accumulator's lanes summed into its place in the output: a full 4 × 4 tile
    /// through [`sum_lanes_16`], a partial one accumulator by accumulator. Both add the lanes
    /// in [`sum_lanes`]'s pairs, so a result does not depend on the tile it was in.
    #[inline(always)]
    unsafe fn store_tile<const W: usize, const A: usize>(
        acc: &[[__m512; A]; W],
        dst: Tile,
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
                let row = dst.out.add((act + i) * dst.stride + first);
                _mm_storeu_ps(row, extract_quarter(sums, i));
            }
            return;
        }
        for c in 0..W {
            for i in 0..A {
                *dst.out.add((act + i) * dst.stride + first + c) = sum_lanes(acc[c][i]);
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

    /// The 16 lanes of `v` summed in a fixed order: lane j with j + 8, then j + 4, j + 2,
    /// j + 1 (the order `sum_lanes_16` keeps; `_mm512_reduce_add_ps` promises none).
    #[inline(always)]
    unsafe fn sum_lanes(v: __m512) -> f32 {
        let h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps::<1>(v));
        let q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
        let p = _mm_add_ps(q, _mm_movehl_ps(q, q));
        _mm_cvtss_f32(_mm_add_ss(p, _mm_movehdup_ps(p)))
    }

    /// Lane k: [`sum_lanes`]`(vs[k])`, the same additions in the same pairs, done for 16
    /// accumulators at once (15 pairwise combinations instead of 16 separate reductions).
    #[inline(always)]
    unsafe fn sum_lanes_16(vs: &[__m512; 16]) -> __m512 {
        /// Lanes `lo` of `a` then of `b` plus lanes `lo + step` of `a` then of `b`.
        #[inline(always)]
        unsafe fn fold(a: __m512, b: __m512, lo: __m512i, step: i32) -> __m512 {
            let hi = _mm512_add_epi32(lo, _mm512_set1_epi32(step));
            _mm512_add_ps(
                _mm512_permutex2var_ps(a, lo, b),
                _mm512_permutex2var_ps(a, hi, b),
            )
        }
        // Index vectors: 16..31 pick from `b`.
        let by8 = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
        let by4 = _mm512_setr_epi32(0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27);
        let by2 = _mm512_setr_epi32(0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29);
        let by1 = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let mut w = [_mm512_setzero_ps(); 8];
        for k in 0..8 {
            w[k] = fold(vs[2 * k], vs[2 * k + 1], by8, 8);
        }
        let mut x = [_mm512_setzero_ps(); 4];
        for k in 0..4 {
            x[k] = fold(w[2 * k], w[2 * k + 1], by4, 4);
        }
        let y0 = fold(x[0], x[1], by2, 2);
        let y1 = fold(x[2], x[3], by2, 2);
        fold(y0, y1, by1, 1)
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
        // 3, 4 and 37 blocks: odd and even counts, whole and partial chunks of 16 blocks.
        for cols in [96, 128, 1184] {
            // 37 weight rows: a partial chunk of the tiled kernel and a partial register tile.
            let w = Tensor::randn(0f32, 1.0, (37, cols), &dev).unwrap();
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
                // A row's result does not depend on its batch: rows alone (the pass kernel)
                // equal the batch (from TILED_FROM_ROWS rows, the tiled kernel) bit for bit.
                for i in [0, n / 2, n - 1] {
                    let alone = m.forward(&x.narrow(0, i, 1).unwrap()).unwrap();
                    let in_batch = y.narrow(0, i, 1).unwrap();
                    assert_eq!(
                        alone.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                        in_batch.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                        "{format:?} {cols} cols, row {i} of {n}"
                    );
                }
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

    /// The SIMD rounding and the scalar loop agree on every byte, scale and sum.
    #[test]
    fn rounding_is_the_same_on_every_instruction_set() {
        let xs: Vec<f32> = Tensor::randn(0f32, 3.0, (4, 96), &Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let a = ByteActivations::quantize(&xs, 96);
        let (mut q, mut scales, mut sums) = (vec![0i8; 384], vec![0f32; 96], vec![0f32; 12]);
        round_blocks_with(&xs, &mut q, &mut scales, &mut sums);
        assert_eq!((a.q, a.scales, a.sums), (q, scales, sums));
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
