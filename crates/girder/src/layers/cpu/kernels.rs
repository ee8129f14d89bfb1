//! Elementwise kernels of the encoder's hot path, applied in place and vectorized.
//!
//! candle computes GELU with a scalar `erff` call per element and softmax with a scalar
//! `expf` per score; on MiniLM they took about 11% and 3% of the forward pass (perf on
//! workload (a) of `scripts/bench-encoders`). Here both run as branch-free arithmetic that
//! the compiler vectorizes, compiled once per instruction set (AVX-512, AVX2+FMA, baseline)
//! and picked at run time, so one binary runs everywhere and uses what the CPU has.
//!
//! The kernels overwrite a tensor's storage, so they are only applied to a tensor that was
//! just produced and is not shared, and only when it tracks no gradient
//! ([`Tensor::track_op`]): with gradients the entry points here take the differentiable ops
//! of [`super::autograd`] on the CPU, candle's elsewhere.

use super::team;
use crate::error::Result;
use candle_core::{CpuStorage, InplaceOp1, InplaceOp2, Layout, Tensor};
use std::mem::MaybeUninit;

/// Elements per parallel task: large enough that a task outweighs taking it.
const CHUNK: usize = 1 << 14;

/// `erf(x)` as a rational function of `x²` on `[-4, 4]` (where erf reaches ±1 in f32),
/// Eigen's `generic_fast_erf_float`; within 5e-7 of the exact value (tested below).
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 - 2.101_024e-6;
    p = p * x2 - 5.692_506_4e-5;
    p = p * x2 - 7.349_906_3e-4;
    p = p * x2 - 2.954_600_5e-3;
    p = p * x2 - 1.609_603_3e-2;
    let mut q = -1.456_607_2e-5_f32;
    q = q * x2 - 2.133_740_6e-4;
    q = q * x2 - 1.682_827e-3;
    q = q * x2 - 7.373_329_3e-3;
    q = q * x2 - 1.426_474e-2;
    x * p / q
}

/// `e^x` by range reduction to `[-ln2/2, ln2/2]` and a degree-6 polynomial (Cephes'
/// `expf`), the power of two put in the exponent bits; within 2 ulp on the range softmax
/// uses (`x <= 0`). Underflows to about 1e-38 instead of 0 below -87, which a softmax
/// normalised by a sum of at least 1 cannot tell apart.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    // Adding 1.5·2²³ rounds to an integer that then sits in the low mantissa bits: both `n`
    // and its bits without a float-to-int conversion, which would not vectorize (Rust's `as`
    // saturates, element by element).
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(shifted.to_bits().wrapping_add(127) << 23)
}

#[inline(always)]
fn gelu_erf_generic(xs: &mut [f32]) {
    for x in xs {
        *x = 0.5 * *x * (1.0 + erf(*x * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// Lanes of the partial maxima and sums below: floating-point reductions only vectorize
/// when written as independent lanes (the compiler may not reorder a sequential sum).
const LANES: usize = 16;

/// One row: `e^(x - max) / Σ`.
#[inline(always)]
fn softmax_generic(row: &mut [f32]) {
    let mut maxes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (m, x) in maxes.iter_mut().zip(chunk) {
            *m = if *x > *m { *x } else { *m };
        }
    }
    let max = chunks
        .remainder()
        .iter()
        .chain(&maxes)
        .fold(f32::NEG_INFINITY, |m, x| if *x > m { *x } else { m });
    for x in row.iter_mut() {
        *x = exp(*x - max);
    }
    let mut sums = [0f32; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (s, x) in sums.iter_mut().zip(chunk) {
            *s += x;
        }
    }
    let sum: f32 = chunks.remainder().iter().sum::<f32>() + sums.iter().sum::<f32>();
    let inv = 1.0 / sum;
    for x in row.iter_mut() {
        *x *= inv;
    }
}

/// Compiles `$generic` once per instruction set and dispatches on what the CPU has.
macro_rules! dispatch {
    ($vis:vis $name:ident, $generic:ident) => {
        $vis fn $name(xs: &mut [f32]) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512(xs: &mut [f32]) {
                    $generic(xs)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2(xs: &mut [f32]) {
                    $generic(xs)
                }
                if crate::layers::cpu::avx512() {
                    // SAFETY: the CPU has the features the function was compiled for.
                    return unsafe { avx512(xs) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: as above.
                    return unsafe { avx2(xs) };
                }
            }
            $generic(xs)
        }
    };
}

/// `act(gate) · up` for rows laid out `[gate (width) | up (width)]`, into `out` (`width` per
/// row). Both activations are `g · sigmoid(z)`: SiLU with `z = g`, GELU's tanh form with
/// `z = 2 √(2/π) (g + 0.044715 g³)` (`0.5 (1 + tanh(u)) = sigmoid(2u)`), so one `exp` each.
#[inline(always)]
fn gated_generic<const GELU_TANH: bool>(
    gate_up: &[f32],
    out: &mut [MaybeUninit<f32>],
    width: usize,
) {
    const TWO_SQRT_2_OVER_PI: f32 = 1.595_769;
    for (pair, o) in gate_up
        .chunks_exact(2 * width)
        .zip(out.chunks_exact_mut(width))
    {
        let (gate, up) = pair.split_at(width);
        for ((o, &g), &u) in o.iter_mut().zip(gate).zip(up) {
            let z = if GELU_TANH {
                TWO_SQRT_2_OVER_PI * (g + 0.044_715 * g * g * g)
            } else {
                g
            };
            o.write(g / (1.0 + exp(-z)) * u);
        }
    }
}

dispatch!(gelu_erf_slice, gelu_erf_generic);
dispatch!(pub(super) softmax_row, softmax_generic);

fn gated_rows<const GELU_TANH: bool>(gate_up: &[f32], out: &mut [MaybeUninit<f32>], width: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512<const G: bool>(a: &[f32], out: &mut [MaybeUninit<f32>], width: usize) {
            gated_generic::<G>(a, out, width)
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<const G: bool>(a: &[f32], out: &mut [MaybeUninit<f32>], width: usize) {
            gated_generic::<G>(a, out, width)
        }
        if crate::layers::cpu::avx512() {
            // SAFETY: the CPU has the features the function was compiled for.
            return unsafe { avx512::<GELU_TANH>(gate_up, out, width) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: as above.
            return unsafe { avx2::<GELU_TANH>(gate_up, out, width) };
        }
    }
    gated_generic::<GELU_TANH>(gate_up, out, width)
}

/// `silu(gate) · up` where `gate_up` `[n, 2·width]` holds gate and up side by side (the
/// output of one fused gate/up projection): `[n, width]`, in one pass over the product
/// instead of candle's narrow, silu and multiply (three tensors allocated per layer and step).
pub fn silu_mul(gate_up: &Tensor) -> Result<Tensor> {
    gated_mul::<false>(gate_up)
}

/// `gelu_tanh(gate) · up` (GeGLU with GELU's tanh approximation, Gemma's MLP), as
/// [`silu_mul`].
pub fn gelu_tanh_mul(gate_up: &Tensor) -> Result<Tensor> {
    gated_mul::<true>(gate_up)
}

fn gated_mul<const GELU_TANH: bool>(gate_up: &Tensor) -> Result<Tensor> {
    let (n, both) = gate_up.dims2()?;
    let width = both / 2;
    if !fast_path(gate_up) || both % 2 != 0 {
        let gate = gate_up.narrow(1, 0, width)?;
        let gate = if GELU_TANH {
            gate.gelu()?
        } else {
            gate.silu()?
        };
        return Ok((gate * gate_up.narrow(1, width, width)?)?);
    }
    let (storage, layout) = gate_up.storage_and_layout();
    let candle_core::Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
        unreachable!("fast_path checked an f32 CPU tensor");
    };
    let (start, end) = layout
        .contiguous_offsets()
        .expect("fast_path checked contiguity");
    let rows_per_task = (4096 / width.max(1)).max(1);
    let product = &data[start..end];
    let out = team::collect_chunks(n * width, rows_per_task * width, |i, o| {
        let g = &product[i * rows_per_task * 2 * width..][..o.len() * 2];
        gated_rows::<GELU_TANH>(g, o, width)
    });
    Ok(Tensor::from_vec(out, (n, width), gate_up.device())?)
}

/// The contiguous f32 elements of an in-place op's storage.
fn contiguous_f32<'a>(
    storage: &'a mut CpuStorage,
    layout: &Layout,
    op: &str,
) -> candle_core::Result<&'a mut [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{op}: f32 tensors only");
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&mut data[start..end]),
        None => candle_core::bail!("{op}: the tensor must be contiguous"),
    }
}

struct GeluErfInPlace;

impl InplaceOp1 for GeluErfInPlace {
    fn name(&self) -> &'static str {
        "girder-gelu-erf"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let xs = contiguous_f32(storage, layout, self.name())?;
        team::for_each_chunk(xs, CHUNK, |_, chunk| gelu_erf_slice(chunk));
        Ok(())
    }
}

struct SoftmaxLastDimInPlace;

impl InplaceOp1 for SoftmaxLastDimInPlace {
    fn name(&self) -> &'static str {
        "girder-softmax-last-dim"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let width = layout.dims().last().copied().unwrap_or(1).max(1);
        let xs = contiguous_f32(storage, layout, self.name())?;
        let rows_per_task = (CHUNK / width).max(1);
        team::for_each_chunk(xs, rows_per_task * width, |_, rows| {
            rows.chunks_mut(width).for_each(softmax_row)
        });
        Ok(())
    }
}

/// `x += y`, `y` either of `x`'s shape or one row broadcast over `x`'s rows (a bias).
struct AddInPlace;

impl InplaceOp2 for AddInPlace {
    fn name(&self) -> &'static str {
        "girder-add"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let CpuStorage::F32(rhs) = s2 else {
            candle_core::bail!("{}: f32 tensors only", self.name());
        };
        let Some((start, end)) = l2.contiguous_offsets() else {
            candle_core::bail!("{}: the tensor must be contiguous", self.name());
        };
        let rhs = &rhs[start..end];
        let xs = contiguous_f32(s1, l1, self.name())?;
        if rhs.len() == xs.len() {
            team::for_each_chunk(xs, CHUNK, |i, x| {
                let y = &rhs[i * CHUNK..][..x.len()];
                x.iter_mut().zip(y).for_each(|(x, y)| *x += y)
            });
        } else if !rhs.is_empty() && xs.len() % rhs.len() == 0 {
            let width = rhs.len();
            let rows_per_task = (CHUNK / width).max(1);
            team::for_each_chunk(xs, rows_per_task * width, |_, rows| {
                for row in rows.chunks_mut(width) {
                    row.iter_mut().zip(rhs).for_each(|(x, y)| *x += y);
                }
            });
        } else {
            candle_core::bail!(
                "{}: cannot add {} elements to {}",
                self.name(),
                rhs.len(),
                xs.len()
            );
        }
        Ok(())
    }
}

/// The elements of a contiguous f32 CPU tensor's storage.
pub(crate) fn f32s<'a>(
    storage: &'a candle_core::Storage,
    layout: &candle_core::Layout,
) -> Option<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (candle_core::Storage::Cpu(CpuStorage::F32(data)), Some((start, end))) => {
            Some(&data[start..end])
        }
        _ => None,
    }
}

/// Whether girder's kernels may run on `x`: f32 on the CPU, contiguous, no gradient.
pub(crate) fn fast_path(x: &Tensor) -> bool {
    x.device().is_cpu()
        && x.dtype() == candle_core::DType::F32
        && x.is_contiguous()
        && !x.track_op()
}

/// Exact (erf) GELU, `x·Φ(x)`, computed in place when `x` is a fresh f32 CPU tensor
/// (`x` must not be shared: its storage is overwritten), candle's `gelu_erf` otherwise.
/// When `x` tracks gradients: the differentiable op of [`super::autograd`] on the CPU.
pub fn gelu_erf(x: Tensor) -> Result<Tensor> {
    if fast_path(&x) {
        x.inplace_op1(&GeluErfInPlace)?;
        Ok(x)
    } else if trains_on_cpu(&x) {
        super::autograd::gelu_erf(&x)
    } else {
        Ok(x.gelu_erf()?)
    }
}

/// Softmax over the last dimension, in place under the same conditions as [`gelu_erf`];
/// when `x` tracks gradients, the differentiable op of [`super::autograd`] on the CPU and
/// candle's composed softmax elsewhere (candle's fused one has no backward pass).
pub fn softmax_last_dim(x: Tensor) -> Result<Tensor> {
    if fast_path(&x) {
        x.inplace_op1(&SoftmaxLastDimInPlace)?;
        Ok(x)
    } else if trains_on_cpu(&x) {
        super::autograd::softmax_last_dim(&x)
    } else if x.track_op() {
        Ok(candle_nn::ops::softmax(&x, candle_core::D::Minus1)?)
    } else {
        Ok(candle_nn::ops::softmax_last_dim(&x)?)
    }
}

/// An f32 CPU tensor that tracks gradients: the backward passes of [`super::autograd`] apply.
pub(crate) fn trains_on_cpu(x: &Tensor) -> bool {
    x.track_op() && x.device().is_cpu() && x.dtype() == candle_core::DType::F32
}

/// `x + y` into `x`'s storage (`x` must not be shared), where `y` has `x`'s shape or is one
/// row `[width]` added to every row of `x` (a bias); candle's broadcasting add when either
/// tracks gradients or is not a contiguous f32 CPU tensor.
///
/// Why not candle's add: on 2 cores its parallel elementwise ops run on a second thread pool
/// whose workers spin after each op and compete with the matmul's rayon threads (perf: 30%
/// of workload (a) in `BarrierGuard::drop` and its spinning workers).
pub fn add_in_place(x: Tensor, y: &Tensor) -> Result<Tensor> {
    let row_or_same = y.dims() == x.dims() || (y.rank() == 1 && x.dims().last() == y.dims().last());
    if fast_path(&x) && fast_path(y) && row_or_same {
        x.inplace_op2(y, &AddInPlace)?;
        Ok(x)
    } else {
        Ok(x.broadcast_add(y)?)
    }
}

/// Lane sums in a fixed order, shared by the AVX-512 kernels (callers enable AVX-512F):
/// one accumulator's 16 lanes, or 16 accumulators at once with the same additions, so a
/// result does not depend on which of the two reduced it.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    /// The 16 lanes of `v` summed in a fixed order: lane j with j + 8, then j + 4, j + 2,
    /// j + 1 (the order `sum_lanes_16` keeps; `_mm512_reduce_add_ps` promises none).
    #[inline(always)]
    pub(crate) unsafe fn sum_lanes(v: __m512) -> f32 {
        let h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps::<1>(v));
        let q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
        let p = _mm_add_ps(q, _mm_movehl_ps(q, q));
        _mm_cvtss_f32(_mm_add_ss(p, _mm_movehdup_ps(p)))
    }

    /// Lane k: [`sum_lanes`]`(vs[k])`, the same additions in the same pairs, done for 16
    /// accumulators at once (15 pairwise combinations instead of 16 separate reductions).
    #[inline(always)]
    pub(crate) unsafe fn sum_lanes_16(vs: &[__m512; 16]) -> __m512 {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::max_diff;
    use candle_core::Device;

    fn grid() -> Vec<f32> {
        (-200_000..=200_000).map(|i| i as f32 * 1e-4).collect()
    }

    #[test]
    fn erf_is_within_5e_7_of_libm() {
        let worst = grid()
            .into_iter()
            .map(|x| (erf(x) as f64 - libm_erf(x as f64)).abs())
            .fold(0.0, f64::max);
        assert!(worst < 5e-7, "max |erf error| {worst:e}");
    }

    fn libm_erf(x: f64) -> f64 {
        // Tensor::erf runs candle's (libm) erf in f64, the reference here.
        Tensor::new(&[x], &Device::Cpu)
            .unwrap()
            .erf()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()[0]
    }

    #[test]
    fn exp_is_within_2_ulp_on_softmax_inputs() {
        for x in grid()
            .into_iter()
            .map(|x| x * 4.0)
            .filter(|x| *x <= 0.0 && *x > -87.0)
        {
            let exact = (x as f64).exp();
            let rel = ((exp(x) as f64 - exact) / exact).abs();
            assert!(rel < 2.5e-7, "exp({x}) relative error {rel:e}");
        }
    }

    #[test]
    fn kernels_match_candle() {
        let x = Tensor::randn(0f32, 3.0, (7, 301), &Device::Cpu).unwrap();
        let ours = gelu_erf(x.copy().unwrap()).unwrap();
        assert!(max_diff(&ours, &x.gelu_erf().unwrap()) < 2e-6);
        let ours = softmax_last_dim(x.copy().unwrap()).unwrap();
        let theirs = candle_nn::ops::softmax_last_dim(&x).unwrap();
        let diff = max_diff(&ours, &theirs);
        assert!(diff < 5e-7, "softmax differs from candle's by {diff:e}");
        let bias = Tensor::randn(0f32, 1.0, 301, &Device::Cpu).unwrap();
        let ours = add_in_place(x.copy().unwrap(), &bias).unwrap();
        assert_eq!(max_diff(&ours, &x.broadcast_add(&bias).unwrap()), 0.0);
        let ours = add_in_place(x.copy().unwrap(), &x).unwrap();
        assert_eq!(max_diff(&ours, &(&x + &x).unwrap()), 0.0);
    }

    #[test]
    fn a_gradient_tracking_tensor_takes_candles_path() {
        let v = candle_core::Var::new(&[0.5f32, -1.0], &Device::Cpu).unwrap();
        let y = gelu_erf(v.as_tensor().clone()).unwrap();
        assert!(y.track_op());
        assert_eq!(v.as_tensor().to_vec1::<f32>().unwrap(), [0.5, -1.0]);
    }
}
