//! A GGUF matrix (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K) times activations rounded
//! to 8 bits, as llama.cpp multiplies them.
//!
//! candle 0.11 multiplies these types with scalar loops in a portable build (its SIMD
//! `vec_dot`s need `target-cpu` flags at compile time), about 30 times slower than llama.cpp
//! for SmolLM2's Q4_1 file. This kernel reads every type in one canonical form
//! ([`formats`]): per block of 32 weights, unsigned integers `q_j` with a scale per half, an
//! integer offset and a minimum, `w_j = s (q_j − o) + m`. It rounds each block of 32
//! activations to signed bytes with its own scale (`x ≈ e · a`, ggml's `block_q8_1`), so that
//! a block's dot product is integer arithmetic:
//!
//! `Σ_j x_j w_j ≈ s e (Σ_j q_j a_j − o Σ_j a_j) + m e Σ_j a_j`
//!
//! Why round the activations: with f32 activations each weight had to be widened to f32 and
//! multiplied one lane per weight; with bytes, AVX-512 VNNI's `vpdpbusd` multiplies and sums
//! 64 weight-activation pairs in one instruction (AVX2's `vpmaddubsw` 32). The cost is the
//! rounding: the logits move by a few percent against the dequantized model's (the f32 path,
//! `GgufMode::Dequantized`, stays exact), the same approximation llama.cpp makes.
//!
//! The kernel is chosen at run time (builds stay portable: no `target-cpu=native`):
//! - AVX-512 VNNI (`vnni512`): the matrix is re-laid out once at load in bands of 16 rows,
//!   each 32-bit lane of a register four weights of one row, so that one `vpdpbusd` against
//!   four broadcast activation bytes adds 64 products to 16 rows' sums and a register of
//!   results is 16 outputs: no lane sums, no shuffles. Decode steps, prompts and batches run
//!   the same kernel, eight activation rows per pass: a row's result does not depend on the
//!   batch it is in.
//! - AVX2 (`avx2`, every type) and a scalar loop (through the canonical form: the reference,
//!   and the kernel of CPUs with neither) read the blocks as the file stores them.
//!
//! Weight rows are split across the [`team`](crate::layers::cpu::team)'s threads.
//!
//! Dequantizing the matrix for one f32 GEMM materialises every matrix as f32 on every call:
//! 538 MB of transient memory for SmolLM2, which under a server's continuous batching cost
//! more than it saved (perf: page clearing and transposes) and grew the resident set by 40%.

use crate::error::Result;
use crate::layers::cpu::team::{self, Chunks};
use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};

#[cfg(target_arch = "x86_64")]
mod avx2;
mod formats;
#[cfg(target_arch = "x86_64")]
mod vnni512;

use formats::{BlockScales, Format, Header, Unpacked};

/// Weights per block of the canonical form (a k-quant super-block is eight of them).
const BLOCK: usize = 32;

/// Activation rows one pass of the kernel multiplies (its accumulators stay in registers).
const ROWS_PER_PASS: usize = 8;

/// Bytes of rounded activations one band's tasks reread: half of a 2 MB L2, the rest left to
/// the weights streaming through and the output rows.
const ACTIVATIONS_IN_L2: usize = 1 << 20;

/// A `[rows, cols]` matrix of one of the block types [`Format`] names. It holds its blocks
/// once, in the layout its kernel reads, not the `QTensor` it was read from: a model's
/// quantized weights are in memory once.
#[derive(Debug, Clone)]
pub struct QuantMatrix {
    rows: usize,
    cols: usize,
    format: Format,
    dtype: candle_core::quantized::GgmlDType,
    layout: Layout,
}

/// How a [`QuantMatrix`] keeps its blocks: as the file stores them (the AVX2 and scalar
/// kernels) or re-laid out for the AVX-512 kernels.
#[derive(Debug, Clone)]
enum Layout {
    Blocks(std::sync::Arc<Vec<u8>>),
    #[cfg(target_arch = "x86_64")]
    Bands(std::sync::Arc<vnni512::Bands>),
}

/// Activation rows rounded block by block to signed bytes: `x_j ≈ scale · q_j`.
struct ByteActivations {
    blocks: usize,
    /// `[rows, blocks · 32]`.
    q: Vec<i8>,
    /// `[rows, blocks]`: each block's scale.
    scales: Vec<f32>,
    /// `[rows, blocks]`: `scale · Σ q` (the Q4_1 minimum's term).
    sums: Vec<f32>,
}

impl ByteActivations {
    /// Rows of `cols` values each; rows are rounded on the team's threads when there are many.
    fn quantize(xs: &[f32], cols: usize) -> Self {
        let blocks = cols / BLOCK;
        let total = xs.len() / BLOCK;
        let mut acts = ByteActivations {
            blocks,
            q: vec![0i8; xs.len()],
            scales: vec![0f32; total],
            sums: vec![0f32; total],
        };
        let rows_per_task = 16;
        let q = Chunks::new(&mut acts.q, rows_per_task * cols);
        let scales = Chunks::new(&mut acts.scales, rows_per_task * blocks);
        let sums = Chunks::new(&mut acts.sums, rows_per_task * blocks);
        team::for_each(q.count(), |i| {
            let x = &xs[i * rows_per_task * cols..((i + 1) * rows_per_task * cols).min(xs.len())];
            // SAFETY: task `i` alone takes chunk `i` of each.
            unsafe { round_blocks(x, q.chunk(i), scales.chunk(i), sums.chunk(i)) }
        });
        acts
    }

    fn row(&self, i: usize) -> ActivationRow<'_> {
        let b = self.blocks;
        ActivationRow {
            q: &self.q[i * b * BLOCK..(i + 1) * b * BLOCK],
            scales: &self.scales[i * b..(i + 1) * b],
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
            let blocks = sums.len().min(xs.len() / BLOCK);
            assert!(q.len() >= blocks * BLOCK && scales.len() >= blocks);
            for b in 0..blocks {
                let (scale, sum, _) =
                    round_block_avx512(xs.as_ptr().add(b * BLOCK), q.as_mut_ptr().add(b * BLOCK));
                *scales.get_unchecked_mut(b) = scale;
                *sums.get_unchecked_mut(b) = scale * sum as f32;
            }
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(xs: &[f32], q: &mut [i8], scales: &mut [f32], sums: &mut [f32]) {
            round_blocks_with(xs, q, scales, sums)
        }
        if crate::layers::cpu::avx512() {
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

/// Rounds the 32 values at `x` to bytes at `q` (`vcvtps2dq` rounds ties to even); returns the
/// block's scale, `Σ q` and `Σ q` over its first 16 values. The one rounding of the AVX-512 paths ([`round_blocks`] and the
/// VNNI kernel's [`vnni512::PassActivations::round`]): a row is rounded the same by both.
///
/// # Safety
/// AVX-512 F (inlined into functions compiled for it); 32 values readable at `x`, 32 bytes
/// writable at `q`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn round_block_avx512(x: *const f32, q: *mut i8) -> (f32, i32, i32) {
    use std::arch::x86_64::*;
    let x0 = _mm512_loadu_ps(x);
    let x1 = _mm512_loadu_ps(x.add(16));
    let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1)));
    let scale = amax / 127.0;
    let inverse = _mm512_set1_ps(if scale > 0.0 { 1.0 / scale } else { 0.0 });
    let q0 = _mm512_cvtps_epi32(_mm512_mul_ps(x0, inverse));
    let q1 = _mm512_cvtps_epi32(_mm512_mul_ps(x1, inverse));
    let out = q as *mut __m128i;
    _mm_storeu_si128(out, _mm512_cvtepi32_epi8(q0));
    _mm_storeu_si128(out.add(1), _mm512_cvtepi32_epi8(q1));
    let low = _mm512_reduce_add_epi32(q0);
    (scale, low + _mm512_reduce_add_epi32(q1), low)
}

#[inline(always)]
fn round_blocks_with(xs: &[f32], q: &mut [i8], scales: &mut [f32], sums: &mut [f32]) {
    for (((x, qb), scale_out), sum_out) in xs
        .chunks_exact(BLOCK)
        .zip(q.chunks_exact_mut(BLOCK))
        .zip(scales.iter_mut())
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
        *scale_out = scale;
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
    /// The matrix of a `QTensor` `[rows, cols]` of a type the kernels read (Q4_0, Q4_1,
    /// Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K); `None` for any other type.
    pub fn from_qtensor(t: &std::sync::Arc<QTensor>) -> Result<Option<Self>> {
        if !t.device().is_cpu() {
            return Ok(None);
        }
        let Some(format) = Format::from_ggml(t.dtype()) else {
            return Ok(None);
        };
        let (rows, cols) = t.shape().dims2()?;
        let data = t.data()?;
        let per_block = format.file_block_weights();
        if !cols.is_multiple_of(per_block)
            || data.len() != rows * cols / per_block * format.file_block_bytes()
        {
            return Ok(None);
        }
        let layout = match Kernel::detect() {
            #[cfg(target_arch = "x86_64")]
            Kernel::Vnni512 => Layout::Bands(std::sync::Arc::new(vnni512::Bands::new(
                format,
                rows,
                cols / per_block,
                &data,
            ))),
            _ => Layout::Blocks(std::sync::Arc::new(data.into_owned())),
        };
        Ok(Some(QuantMatrix {
            rows,
            cols,
            format,
            dtype: t.dtype(),
            layout,
        }))
    }

    /// Matrices of one block type and width stacked row after row (q, k and v as one
    /// product), from their blocks as they lie; `None` where the layouts cannot be joined
    /// (an AVX-512 band left partly empty by a matrix that is not the last).
    pub fn stack(parts: &[&QuantMatrix]) -> Option<QuantMatrix> {
        let first = parts.first()?;
        if parts
            .iter()
            .any(|p| p.dtype != first.dtype || p.cols != first.cols)
        {
            return None;
        }
        let layout = match &first.layout {
            Layout::Blocks(_) => {
                let mut bytes = Vec::new();
                for p in parts {
                    let Layout::Blocks(data) = &p.layout else {
                        return None;
                    };
                    bytes.extend_from_slice(data);
                }
                Layout::Blocks(std::sync::Arc::new(bytes))
            }
            #[cfg(target_arch = "x86_64")]
            Layout::Bands(_) => {
                let bands = parts
                    .iter()
                    .map(|p| match &p.layout {
                        Layout::Bands(b) => Some(b.as_ref()),
                        Layout::Blocks(_) => None,
                    })
                    .collect::<Option<Vec<_>>>()?;
                Layout::Bands(std::sync::Arc::new(vnni512::Bands::stack(&bands)?))
            }
        };
        Some(QuantMatrix {
            rows: parts.iter().map(|p| p.rows).sum(),
            cols: first.cols,
            format: first.format,
            dtype: first.dtype,
            layout,
        })
    }

    /// The GGUF block type.
    pub fn dtype(&self) -> candle_core::quantized::GgmlDType {
        self.dtype
    }

    /// The blocks as a `QTensor` again, where they lie as the file stores them (the AVX2 and
    /// scalar layout); `None` for the AVX-512 bands, which are not read back.
    pub fn to_qtensor(&self) -> Option<Result<QTensor>> {
        match &self.layout {
            Layout::Blocks(data) => Some(
                candle_core::quantized::ggml_file::qtensor_from_ggml(
                    self.dtype,
                    data,
                    vec![self.rows, self.cols],
                    &Device::Cpu,
                )
                .map_err(Into::into),
            ),
            #[cfg(target_arch = "x86_64")]
            Layout::Bands(_) => None,
        }
    }

    /// Whether the kernels read this block type (others go through candle's quantized
    /// matmul, which dequantizes block by block).
    pub fn reads(dtype: candle_core::quantized::GgmlDType) -> bool {
        Format::from_ggml(dtype).is_some()
    }

    /// `(rows, cols)`: `[out, in]` of the linear layer it is the weight of.
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
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
        // The activations where they lie when they are a contiguous f32 CPU tensor (the
        // output of a norm or an activation), else a copy.
        let (storage, layout) = x.storage_and_layout();
        let copied: Vec<f32>;
        let xs: &[f32] = match crate::layers::cpu::kernels::f32s(&storage, layout) {
            Some(xs) => xs,
            None => {
                copied = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
                &copied
            }
        };
        let out = match &self.layout {
            Layout::Blocks(data) => self.forward_blocks(data, xs, n),
            #[cfg(target_arch = "x86_64")]
            Layout::Bands(bands) => {
                // SAFETY: `from_qtensor` chose this layout after Kernel::detect saw AVX-512.
                let acts = unsafe { vnni512::PassActivations::round(xs, n, cols / BLOCK) };
                forward_bands(bands, &acts, n)
            }
        };
        drop(storage);
        Ok(Tensor::from_vec(out, (n, self.rows), &Device::Cpu)?)
    }

    /// `[n, rows]` through the AVX2 or scalar kernel, [`ROWS_PER_PASS`] activation rows per
    /// pass over a weight row.
    fn forward_blocks(&self, data: &[u8], xs: &[f32], n: usize) -> Vec<f32> {
        let cols = self.cols;
        let passes: Vec<ByteActivations> = xs
            .chunks(ROWS_PER_PASS * cols)
            .map(|rows| ByteActivations::quantize(rows, cols))
            .collect();
        let row_bytes = cols / self.format.file_block_weights() * self.format.file_block_bytes();
        let (kernel, format) = (Kernel::detect(), self.format);
        let mut transposed = vec![0f32; n * self.rows];
        // Laid out [rows, n] while computing (each thread owns whole weight rows), transposed
        // at the end.
        let chunk_rows = 16;
        team::for_each_chunk(&mut transposed, chunk_rows * n, |c, dst| {
            let first = c * chunk_rows;
            for (r, dst_row) in dst.chunks_mut(n).enumerate() {
                let w = &data[(first + r) * row_bytes..(first + r + 1) * row_bytes];
                for (acts, dst) in passes.iter().zip(dst_row.chunks_mut(ROWS_PER_PASS)) {
                    weight_row(kernel, format, w, acts, dst);
                }
            }
        });
        let mut out = vec![0f32; n * self.rows];
        for (r, column) in transposed.chunks(n.max(1)).enumerate() {
            for (i, v) in column.iter().enumerate() {
                out[i * self.rows + r] = *v;
            }
        }
        out
    }
}

/// `[n, rows]` through the AVX-512 kernel: bands of 16 weight rows spread over the
/// team's threads, each band multiplied by [`ROWS_PER_PASS`] activation rows per pass over its
/// blocks (the band, a few KB, stays in L1 between passes), a group of passes per task.
#[cfg(target_arch = "x86_64")]
fn forward_bands(w: &vnni512::Bands, acts: &vnni512::PassActivations, n: usize) -> Vec<f32> {
    /// The output, written by every thread at its own columns.
    struct Shared(vnni512::Output);
    // SAFETY: threads write disjoint columns (their own bands' rows) of the output.
    unsafe impl Sync for Shared {}
    let rows = w.rows();
    // Every element is written once (the bands cover the rows, the passes the activation
    // rows): no zero fill, which for the LM head of a 16-sequence step was 3 MB per step.
    let mut out = Vec::<f32>::with_capacity(n * rows);
    let shared = Shared(vnni512::Output {
        at: out.as_mut_ptr(),
        stride: rows,
    });
    // A long prompt's activations outgrow L2 (8960 columns of 512 rows are 7 MB), and every band
    // streams all of them: tasks take a band and a group of passes whose records fit in
    // `ACTIVATIONS_IN_L2`, so consecutive tasks (taken in order by the team's threads) reread
    // one group from L2 while the weights, a few KB per band, stream past it.
    let passes = n.div_ceil(ROWS_PER_PASS);
    let group = (ACTIVATIONS_IN_L2 / acts.pass_bytes().max(1)).clamp(1, passes.max(1));
    let bands = w.bands();
    let multiply = |task: usize| {
        let shared = &shared;
        let (first, band) = ((task / bands) * group, task % bands);
        for pass in first..(first + group).min(passes) {
            // SAFETY: `from_qtensor` chose this layout after Kernel::detect saw AVX-512 VNNI;
            // `acts` holds `n` rows; band `band`'s columns are written by this task only.
            unsafe {
                match n - pass * ROWS_PER_PASS {
                    1 => vnni512::band::<1>(w, band, acts, pass, shared.0),
                    2 => vnni512::band::<2>(w, band, acts, pass, shared.0),
                    3 => vnni512::band::<3>(w, band, acts, pass, shared.0),
                    4 => vnni512::band::<4>(w, band, acts, pass, shared.0),
                    5 => vnni512::band::<5>(w, band, acts, pass, shared.0),
                    6 => vnni512::band::<6>(w, band, acts, pass, shared.0),
                    7 => vnni512::band::<7>(w, band, acts, pass, shared.0),
                    _ => vnni512::band::<8>(w, band, acts, pass, shared.0),
                }
            }
        }
    };
    crate::layers::cpu::team::for_each(bands * passes.div_ceil(group), multiply);
    // SAFETY: the bands wrote all `n · rows` elements.
    unsafe { out.set_len(n * rows) };
    out
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

/// The quantized kernel this process runs: `avx512-vnni`, `avx2` or `scalar`
/// (`GIRDER_NO_AVX512=1` forces `avx2` where AVX-512 is there).
pub fn kernel_name() -> &'static str {
    match Kernel::detect() {
        Kernel::Vnni512 => "avx512-vnni",
        Kernel::Avx2 => "avx2",
        Kernel::Scalar => "scalar",
    }
}

/// The widest kernel this CPU runs, detected once at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    /// AVX-512 BW + VL + VNNI over [`Layout::Bands`] matrices: 4 byte products for each of
    /// 16 rows per `vpdpbusd`.
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
                if crate::layers::cpu::avx512()
                    && has!("avx512bw")
                    && has!("avx512dq")
                    && has!("avx512vl")
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
/// [`ROWS_PER_PASS`]); `w` is a row as the file stores it.
fn weight_row(kernel: Kernel, format: Format, w: &[u8], acts: &ByteActivations, out: &mut [f32]) {
    assert!(out.len() <= ROWS_PER_PASS && acts.q.len() >= out.len() * acts.blocks * BLOCK);
    let groups = acts.blocks / format.group_blocks();
    assert!(w.len() >= groups * format.file_block_bytes());
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
                (Kernel::Avx2, Format::Q4_1) => return by_rows!(avx2::q4_1),
                (Kernel::Avx2, Format::Q8_0) => return by_rows!(avx2::q8_0),
                (Kernel::Avx2, Format::Q4_0) => return by_rows!(avx2::q4_0),
                (Kernel::Avx2, Format::Q5_0) => return by_rows!(avx2::q5_0),
                (Kernel::Avx2, Format::Q5_1) => return by_rows!(avx2::q5_1),
                (Kernel::Avx2, Format::Q4K) => return by_rows!(avx2::q4_k),
                (Kernel::Avx2, Format::Q5K) => return by_rows!(avx2::q5_k),
                (Kernel::Avx2, Format::Q6K) => return by_rows!(avx2::q6_k),
                _ => {}
            }
        }
    }
    let _ = kernel;
    scalar_row(format, w, acts, out);
}

/// The reference the SIMD kernels are tested against, and the kernel of the types and CPUs
/// they do not cover: each file block read into the canonical form ([`formats`]), each block's
/// `s_h · e · (Σ q a − o Σ a) + m · e Σ a` in f32.
fn scalar_row(format: Format, w: &[u8], acts: &ByteActivations, out: &mut [f32]) {
    let group = format.group_blocks();
    let mut header: Header = [0; 2];
    let mut blocks = [Unpacked::default(); 8];
    out.iter_mut().for_each(|o| *o = 0.0);
    for (g, file_block) in w
        .chunks_exact(format.file_block_bytes())
        .take(acts.blocks / group)
        .enumerate()
    {
        formats::unpack_group(format, file_block, &mut header, &mut blocks);
        for (k, block) in blocks[..group].iter().enumerate() {
            let scales = BlockScales::new(format, &header, block.sub);
            let b = g * group + k;
            for (i, o) in out.iter_mut().enumerate() {
                let a = acts.row(i);
                let aq = &a.q[b * BLOCK..(b + 1) * BLOCK];
                let mut half = [0f32; 2];
                for (h, part) in half.iter_mut().enumerate() {
                    let (q, x) = (&block.q[16 * h..16 * h + 16], &aq[16 * h..16 * h + 16]);
                    let dot: i32 = q.iter().zip(x).map(|(&q, &x)| q as i32 * x as i32).sum();
                    let sum: i32 = x.iter().map(|&x| x as i32).sum();
                    *part = scales.s[h] * a.scales[b] * (dot - scales.offset * sum) as f32;
                }
                *o += half[0] + half[1] + scales.minimum * a.sums[b];
            }
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
    use candle_core::quantized::GgmlDType;

    /// `x` with every block replaced by what the kernel multiplies: `scale · q`.
    fn rounded(x: &Tensor) -> Tensor {
        let (n, cols) = x.dims2().unwrap();
        let a = ByteActivations::quantize(&x.flatten_all().unwrap().to_vec1().unwrap(), cols);
        let back: Vec<f32> =
            a.q.iter()
                .enumerate()
                .map(|(j, &q)| q as f32 * a.scales[j / BLOCK])
                .collect();
        Tensor::from_vec(back, (n, cols), &Device::Cpu).unwrap()
    }

    /// Every kernel this CPU has, and the scalar one, against the dequantized weights times
    /// the rounded activations (the same products, summed in another order), for 1 to 8
    /// rows (one pass of the kernel), and 12, 21 and 70 (passes of 8), with an even and an
    /// odd block count.
    fn has_avx2() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            has!("avx2") && has!("fma") && has!("f16c")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    fn check(format: GgmlDType) {
        let dev = Device::Cpu;
        let per_block = Format::from_ggml(format).unwrap().file_block_weights();
        // 3, 4 and 37 blocks (k-quants: 1, 2 and 5 super-blocks).
        let widths = if per_block == BLOCK {
            [96, 128, 1184]
        } else {
            [256, 512, 1280]
        };
        for cols in widths {
            // 37 weight rows: two bands of 16 and a partial one (padded at load).
            let w = Tensor::randn(0f32, 1.0, (37, cols), &dev).unwrap();
            let q = std::sync::Arc::new(QTensor::quantize(&w, format).unwrap());
            let m = QuantMatrix::from_qtensor(&q).unwrap().unwrap();
            let dense = q.dequantize(&dev).unwrap();
            for n in [1, 2, 3, 5, 8, 12, 21, 70] {
                let x = Tensor::randn(0f32, 1.0, (n, cols), &dev).unwrap();
                let y = m.forward(&x).unwrap();
                let exact = x.matmul(&dense.t().unwrap()).unwrap();
                let same_products = rounded(&x).matmul(&dense.t().unwrap()).unwrap();
                // The same products summed in another order: f32 rounding relative to the
                // outputs' size (up to ~40 at 1184 columns), far below any wrong block's error.
                let size = same_products
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                let diff = max_diff(&y, &same_products);
                assert!(
                    diff <= 1e-5 * size.max(1.0),
                    "{format:?} {cols} cols {n} rows: {diff} (outputs up to {size})"
                );
                // The rounding itself: each activation moves by at most half a step.
                let rounding = max_diff(&y, &exact);
                assert!(
                    rounding < 0.05 * (cols as f32).sqrt(),
                    "{format:?}: {rounding}"
                );
                // A row's result does not depend on its batch: rows alone equal the same rows
                // in the batch (passes of up to ROWS_PER_PASS rows) bit for bit.
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
                // The scalar kernel and the AVX2 one (where the CPU has it, whichever kernel
                // `forward` chose) on the file's blocks, against the first weight row's
                // results of this CPU's kernel.
                let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
                let acts = ByteActivations::quantize(&xs, cols);
                let row_bytes = cols / per_block * m.format.file_block_bytes();
                let fast: Vec<f32> = y
                    .narrow(1, 0, 1)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                for kernel in [Kernel::Scalar, Kernel::Avx2] {
                    if kernel == Kernel::Avx2 && !has_avx2() {
                        continue;
                    }
                    let mut got = vec![0f32; n];
                    weight_row(
                        kernel,
                        m.format,
                        &q.data().unwrap()[..row_bytes],
                        &acts,
                        &mut got,
                    );
                    for (g, f) in got.iter().zip(&fast) {
                        let tolerance = 1e-5 * size.max(1.0);
                        assert!(
                            (g - f).abs() < tolerance,
                            "{format:?} {n}: {kernel:?} {g} vs {f}"
                        );
                    }
                }
            }
        }
    }

    /// A prompt long enough that its activations exceed `ACTIVATIONS_IN_L2` runs in several
    /// groups of passes (the last one partial) and gives every row what it gives alone.
    #[test]
    fn long_prompts_run_in_groups_of_passes() {
        let dev = Device::Cpu;
        let (rows, cols, n) = (37, 1280, 1203);
        let w = Tensor::randn(0f32, 1.0, (rows, cols), &dev).unwrap();
        let q = std::sync::Arc::new(QTensor::quantize(&w, GgmlDType::Q4K).unwrap());
        let m = QuantMatrix::from_qtensor(&q).unwrap().unwrap();
        let x = Tensor::randn(0f32, 1.0, (n, cols), &dev).unwrap();
        let y = m.forward(&x).unwrap();
        let same_products = rounded(&x)
            .matmul(&q.dequantize(&dev).unwrap().t().unwrap())
            .unwrap();
        assert!(max_diff(&y, &same_products) < 1e-3);
        for i in [0, 600, n - 1] {
            let alone = m.forward(&x.narrow(0, i, 1).unwrap()).unwrap();
            assert_eq!(
                alone.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                y.narrow(0, i, 1)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
                "row {i} of {n}"
            );
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
    fn q4_0_equals_dequantized_matmul() {
        check(GgmlDType::Q4_0);
    }

    #[test]
    fn q5_0_equals_dequantized_matmul() {
        check(GgmlDType::Q5_0);
    }

    #[test]
    fn q5_1_equals_dequantized_matmul() {
        check(GgmlDType::Q5_1);
    }

    #[test]
    fn q4_k_equals_dequantized_matmul() {
        check(GgmlDType::Q4K);
    }

    #[test]
    fn q5_k_equals_dequantized_matmul() {
        check(GgmlDType::Q5K);
    }

    #[test]
    fn q6_k_equals_dequantized_matmul() {
        check(GgmlDType::Q6K);
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
        let (mut q, mut scales, mut sums) = (vec![0i8; 384], vec![0f32; 12], vec![0f32; 12]);
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
        assert_eq!(a.sums[1], a.scales[1] * (-127 + 64) as f32);
    }

    #[test]
    fn f16_conversion() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x0000), 0.0);
    }
}
