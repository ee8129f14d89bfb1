//! `x W` with `W` kept in bf16 or f16 (half the memory of f32) and `x`, the products and
//! their sums in f32: the result is the f32 product of the rounded weights.
//!
//! - A few rows (a short sentence, a decode step: at most [`skinny_matmul::MAX_ROWS`]) run
//!   the skinny kernel, which widens each 16 weights (AVX-512) or 8 (AVX2 with F16C) to f32
//!   in the register they are loaded into: the weights stream from memory once, at half the
//!   bytes of f32.
//! - Many rows, or a CPU with neither: the columns are split into panels shared among the team's threads; each
//!   thread widens its panel (`[in, width]`) into a buffer of its own and multiplies it with
//!   the `gemm` crate's f32 kernel on that thread. Widening costs one pass over the weights
//!   per product, against `rows` multiply-adds per weight in the product itself.
//!
//! Why not the CPU's bf16 dot products (AVX-512 BF16's `vdpbf16ps`): they round the
//! activations to bf16 too, a second error on every product; widening the weights keeps the
//! activations exact.

use super::skinny_matmul;
use super::team;
use crate::error::Result;
use candle_core::{DType, Device, Tensor};
use std::cell::RefCell;

/// Columns per panel of the many-row path at most: the widened panel of an `[1536, 128]`
/// weight is 768 KB, within a 1-2 MB L2.
const MAX_PANEL: usize = 128;

/// Panels of at most [`MAX_PANEL`] columns (whole registers of 16), as many as a multiple
/// of the team's threads so that each thread gets the same share (`[384, 384]` on two
/// threads: four panels of 96, where three of 128 would leave one thread idle a third of
/// the time).
fn panel_width(n: usize, threads: usize) -> usize {
    let panels = n.div_ceil(MAX_PANEL).next_multiple_of(threads.max(1));
    n.div_ceil(panels).next_multiple_of(16).min(MAX_PANEL)
}

/// A `[in, out]` weight in bf16 or f16, row-major: the transposed `nn.Linear` weight, as
/// `Linear` keeps its f32 weights.
#[derive(Debug, Clone)]
pub struct HalfMatrix {
    /// `[in, out]`, contiguous, `DType::BF16` or `DType::F16`.
    weight_t: Tensor,
}

thread_local! {
    /// Each thread's widened panel, reused across products.
    static PANEL_BUFFER: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

impl HalfMatrix {
    /// An `[in, out]` weight, converted to `dtype` (bf16 or f16) where it is not already.
    pub fn from_transposed(weight_t: &Tensor, dtype: DType) -> Result<Self> {
        debug_assert!(matches!(dtype, DType::BF16 | DType::F16));
        let weight_t = weight_t.to_dtype(dtype)?.contiguous()?;
        weight_t.dims2()?;
        Ok(HalfMatrix { weight_t })
    }

    /// Matrices with the same `in` side by side: `[in, Σ out]`.
    pub fn concat(parts: &[&HalfMatrix]) -> Result<Self> {
        let tensors: Vec<&Tensor> = parts.iter().map(|p| &p.weight_t).collect();
        Ok(HalfMatrix {
            weight_t: Tensor::cat(&tensors, 1)?,
        })
    }

    /// bf16 or f16.
    pub fn dtype(&self) -> DType {
        self.weight_t.dtype()
    }

    /// `(in, out)`.
    pub fn dims(&self) -> (usize, usize) {
        let d = self.weight_t.dims();
        (d[0], d[1])
    }

    /// The weight widened to an f32 `[in, out]` tensor.
    pub fn to_f32(&self) -> Result<Tensor> {
        Ok(self.weight_t.to_dtype(DType::F32)?)
    }

    /// `x`: `[m, in]` → `[m, out]`, f32.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (m, k) = x.dims2()?;
        let (k_w, n) = self.dims();
        if k != k_w {
            return Err(candle_core::Error::ShapeMismatchBinaryOp {
                lhs: x.shape().clone(),
                rhs: self.weight_t.shape().clone(),
                op: "half-precision matmul",
            }
            .into());
        }
        if !x.device().is_cpu() || !self.weight_t.device().is_cpu() {
            return Ok(x.broadcast_matmul(&self.to_f32()?)?);
        }
        let x = x.to_dtype(DType::F32)?.contiguous()?;
        let (x_storage, x_layout) = x.storage_and_layout();
        let Some(xs) = super::kernels::f32s(&x_storage, x_layout) else {
            unreachable!("a contiguous f32 CPU tensor");
        };
        let (w_storage, w_layout) = self.weight_t.storage_and_layout();
        let (start, end) = w_layout
            .contiguous_offsets()
            .expect("HalfMatrix keeps its weight contiguous");
        let out = match &*w_storage {
            candle_core::Storage::Cpu(candle_core::CpuStorage::BF16(w)) => {
                product(xs, &w[start..end], m, k, n)
            }
            candle_core::Storage::Cpu(candle_core::CpuStorage::F16(w)) => {
                product(xs, &w[start..end], m, k, n)
            }
            _ => unreachable!("HalfMatrix holds bf16 or f16 on the CPU"),
        };
        drop((x_storage, w_storage));
        Ok(Tensor::from_vec(out, (m, n), &Device::Cpu)?)
    }
}

/// A half-precision element widened to f32 a slice at a time.
trait Widen: skinny_matmul::HalfElement {
    fn widen(src: &[Self], dst: &mut [f32]);
}

impl Widen for half::bf16 {
    fn widen(src: &[Self], dst: &mut [f32]) {
        half::slice::HalfFloatSliceExt::convert_to_f32_slice(src, dst);
    }
}

impl Widen for half::f16 {
    fn widen(src: &[Self], dst: &mut [f32]) {
        half::slice::HalfFloatSliceExt::convert_to_f32_slice(src, dst);
    }
}

/// `x [m, k] · w [k, n]` → `[m, n]`.
fn product<W: Widen>(x: &[f32], w: &[W], m: usize, k: usize, n: usize) -> Vec<f32> {
    if m == 0 || n == 0 {
        return vec![0f32; m * n];
    }
    if m <= skinny_matmul::MAX_ROWS && skinny_matmul::available() {
        return skinny_matmul::matmul(x, w, m, k, n);
    }
    if m <= skinny_matmul::MAX_ROWS && skinny_matmul::available_avx2() {
        return skinny_matmul::matmul_half_avx2(x, w, m, k, n);
    }
    let mut out = vec![0f32; m * n];
    // Each task writes its own panel's columns, and no other task's.
    let shared = super::team::SharedOutput(out.as_mut_ptr());
    let panel_width = panel_width(n, team::threads());
    team::for_each(n.div_ceil(panel_width), |p| {
        let shared = &shared;
        let first = p * panel_width;
        let width = panel_width.min(n - first);
        PANEL_BUFFER.with_borrow_mut(|panel| {
            panel.resize(k * width, 0.0);
            for (row, dst) in panel.chunks_exact_mut(width).enumerate() {
                W::widen(&w[row * n + first..row * n + first + width], dst);
            }
            // SAFETY: `x` is `[m, k]` and the panel `[k, width]`, both row-major; the
            // destination is columns `first..first + width` of `out`'s `m` rows of `n`, which
            // no other task writes.
            unsafe {
                gemm::gemm(
                    m,
                    width,
                    k,
                    shared.0.add(first),
                    1,
                    n as isize,
                    false,
                    x.as_ptr(),
                    1,
                    k as isize,
                    panel.as_ptr(),
                    1,
                    width as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                )
            };
        });
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `[rows, cols]` standard normal values, the same on every run.
    fn seeded(rows: usize, cols: usize, seed: u64) -> Tensor {
        let mut rng = crate::rng::Rng::new(seed);
        let values: Vec<f32> = (0..rows * cols).map(|_| rng.normal() as f32).collect();
        Tensor::from_vec(values, (rows, cols), &Device::Cpu).unwrap()
    }

    #[test]
    fn panels_are_shared_evenly() {
        assert_eq!(panel_width(384, 2), 96);
        assert_eq!(panel_width(1536, 2), 128);
        assert_eq!(panel_width(768, 2), 128);
        assert_eq!(panel_width(40, 2), 32);
        assert_eq!(panel_width(384, 1), 128);
    }

    /// The half matrix's product equals the f32 product of the same rounded weights.
    #[test]
    fn equals_the_f32_product_of_the_rounded_weights() {
        for dtype in [DType::BF16, DType::F16] {
            for (m, k, n) in [
                (1, 64, 48),
                (17, 384, 384),
                (5, 33, 70),
                (60, 384, 1536),
                (200, 96, 130),
            ] {
                let (x, w) = (seeded(m, k, 1), seeded(k, n, 2));
                let half = HalfMatrix::from_transposed(&w, dtype).unwrap();
                let rounded = w.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap();
                let expected = x.matmul(&rounded).unwrap().to_vec2::<f32>().unwrap();
                let got = half.forward(&x).unwrap().to_vec2::<f32>().unwrap();
                for (r, (e, g)) in expected.iter().zip(&got).enumerate() {
                    for (c, (e, g)) in e.iter().zip(g).enumerate() {
                        assert!(
                            (e - g).abs() <= 1e-4 * (1.0 + e.abs()),
                            "{dtype:?} {m}x{k}x{n} [{r},{c}]: {g} vs {e}"
                        );
                    }
                }
            }
        }
    }
}
