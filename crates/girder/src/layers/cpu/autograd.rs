//! The backward passes of the fused operations, for training: LayerNorm, softmax and exact
//! GELU as candle custom ops, each one pass forward and one pass backward with the gradient
//! written out in closed form. The layers take them on the CPU when their input tracks
//! gradients; the in-place kernels of [`super::kernels`] serve inference.
//!
//! Composed from candle's elementary operations, a LayerNorm is nine tensors forward and
//! about twenty backward, a softmax five and ten; `perf` on full fine-tuning showed candle's
//! element-wise maps, their allocations and the threads spinning between them as the larger
//! part of a step. The closed forms are the textbook ones:
//! - LayerNorm, `x̂ = (x − μ)·r`, `r = 1/√(σ² + ε)`, `y = x̂·w + b`:
//!   `∂x = r·(g − mean(g) − x̂·mean(g·x̂))` with `g = ∂y·w`; `∂w = Σ ∂y·x̂`; `∂b = Σ ∂y`.
//! - softmax `y`: `∂x = y·(∂y − Σ ∂y·y)`.
//! - GELU `x·Φ(x)`: `∂x = ∂y·(Φ(x) + x·φ(x))`.
//!
//! The tests compare each against candle's autograd on the elementary composition.

use super::kernels::{erf, exp};
use crate::error::Result;
use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

/// Rows per parallel task.
const ROWS_PER_TASK: usize = 16;

fn contiguous<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(data), Some((start, end))) => Ok(&data[start..end]),
        _ => candle_core::bail!("{op}: contiguous f32 tensors only"),
    }
}

fn values(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.contiguous()?.flatten_all()?.to_vec1::<f32>()
}

/// LayerNorm over the last dimension, with a trainable (or frozen) weight and bias.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        LayerNorm { eps: eps as f32 },
    )?)
}

struct LayerNorm {
    eps: f32,
}

impl LayerNorm {
    /// Mean and `1/√(σ² + ε)` of one row.
    fn stats(&self, row: &[f32]) -> (f32, f32) {
        let n = row.len() as f32;
        let mean = row.iter().sum::<f32>() / n;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
        (mean, 1.0 / (var + self.eps).sqrt())
    }
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "girder-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous(s1, l1, self.name())?;
        let (w, b) = (
            contiguous(s2, l2, self.name())?,
            contiguous(s3, l3, self.name())?,
        );
        let width = w.len();
        if width == 0 || b.len() != width || x.len() % width != 0 {
            candle_core::bail!(
                "{}: weight and bias must match the last dimension",
                self.name()
            );
        }
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(width * ROWS_PER_TASK)
            .zip(x.par_chunks(width * ROWS_PER_TASK))
            .for_each(|(y, x)| {
                for (y, x) in y.chunks_mut(width).zip(x.chunks(width)) {
                    let (mean, rstd) = self.stats(x);
                    for i in 0..width {
                        y[i] = (x[i] - mean) * rstd * w[i] + b[i];
                    }
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (xs, w, dy) = (values(x)?, values(weight)?, values(grad)?);
        let width = w.len();
        let mut dx = vec![0f32; xs.len()];
        // Per task: the partial sums of ∂w and ∂b, added up afterwards.
        let partial: Vec<(Vec<f32>, Vec<f32>)> = dx
            .par_chunks_mut(width * ROWS_PER_TASK)
            .zip(xs.par_chunks(width * ROWS_PER_TASK))
            .zip(dy.par_chunks(width * ROWS_PER_TASK))
            .map(|((dx, x), dy)| {
                let (mut dw, mut db) = (vec![0f32; width], vec![0f32; width]);
                let mut xhat = vec![0f32; width];
                for ((dx, x), dy) in dx
                    .chunks_mut(width)
                    .zip(x.chunks(width))
                    .zip(dy.chunks(width))
                {
                    let (mean, rstd) = self.stats(x);
                    let (mut mean_g, mut mean_gx) = (0f32, 0f32);
                    for i in 0..width {
                        xhat[i] = (x[i] - mean) * rstd;
                        let g = dy[i] * w[i];
                        mean_g += g;
                        mean_gx += g * xhat[i];
                        dw[i] += dy[i] * xhat[i];
                        db[i] += dy[i];
                    }
                    mean_g /= width as f32;
                    mean_gx /= width as f32;
                    for i in 0..width {
                        dx[i] = rstd * (dy[i] * w[i] - mean_g - xhat[i] * mean_gx);
                    }
                }
                (dw, db)
            })
            .collect();
        let (mut dw, mut db) = (vec![0f32; width], vec![0f32; width]);
        for (pw, pb) in partial {
            dw.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
            db.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
        }
        let device = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), device)?),
            Some(Tensor::from_vec(dw, weight.shape(), device)?),
            Some(Tensor::from_vec(db, weight.shape(), device)?),
        ))
    }
}

/// Softmax over the last dimension.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(Softmax)?)
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "girder-softmax"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous(storage, layout, self.name())?;
        let width = layout.shape().dims().last().copied().unwrap_or(1).max(1);
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(width * ROWS_PER_TASK)
            .zip(x.par_chunks(width * ROWS_PER_TASK))
            .for_each(|(y, x)| {
                for (y, x) in y.chunks_mut(width).zip(x.chunks(width)) {
                    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0f32;
                    for i in 0..width {
                        y[i] = exp(x[i] - max);
                        sum += y[i];
                    }
                    let inv = 1.0 / sum;
                    y.iter_mut().for_each(|v| *v *= inv);
                }
            });
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (y, dy) = (values(res)?, values(grad)?);
        let width = x.dims().last().copied().unwrap_or(1).max(1);
        let mut dx = vec![0f32; y.len()];
        dx.par_chunks_mut(width * ROWS_PER_TASK)
            .zip(y.par_chunks(width * ROWS_PER_TASK))
            .zip(dy.par_chunks(width * ROWS_PER_TASK))
            .for_each(|((dx, y), dy)| {
                for ((dx, y), dy) in dx
                    .chunks_mut(width)
                    .zip(y.chunks(width))
                    .zip(dy.chunks(width))
                {
                    let dot: f32 = y.iter().zip(dy).map(|(a, b)| a * b).sum();
                    for i in 0..width {
                        dx[i] = y[i] * (dy[i] - dot);
                    }
                }
            });
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// Exact GELU, `x·Φ(x)` (erf).
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(GeluErf)?)
}

struct GeluErf;

const CHUNK: usize = 1 << 14;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "girder-gelu-erf"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous(storage, layout, self.name())?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(y, x)| {
                for (y, &x) in y.iter_mut().zip(x) {
                    *y = 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
                }
            });
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (xs, dy) = (values(x)?, values(grad)?);
        // 1/√(2π)
        const INV_SQRT_TAU: f32 = 0.398_942_3;
        let mut dx = vec![0f32; xs.len()];
        dx.par_chunks_mut(CHUNK)
            .zip(xs.par_chunks(CHUNK))
            .zip(dy.par_chunks(CHUNK))
            .for_each(|((dx, x), dy)| {
                for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
                    let cdf = 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
                    let pdf = INV_SQRT_TAU * exp(-0.5 * x * x);
                    *dx = dy * (cdf + x * pdf);
                }
            });
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::max_diff;
    use candle_core::{Device, Var, D};

    fn input(rows: usize, width: usize, seed: u64) -> Tensor {
        let mut rng = crate::rng::Rng::new(seed);
        let v: Vec<f32> = (0..rows * width)
            .map(|_| (rng.normal() * 2.0) as f32)
            .collect();
        Tensor::from_vec(v, (rows, width), &Device::Cpu).unwrap()
    }

    /// Value and gradients of `Σ f(x)·c` for a fixed random `c`, through `f`.
    fn check(
        f_ours: impl Fn(&Tensor, &Tensor, &Tensor) -> Tensor,
        f_ref: impl Fn(&Tensor, &Tensor, &Tensor) -> Tensor,
        tolerance: f32,
    ) {
        let (rows, width) = (37, 48);
        let x = Var::from_tensor(&input(rows, width, 1)).unwrap();
        let w = Var::from_tensor(
            &input(1, width, 2)
                .squeeze(0)
                .unwrap()
                .affine(0.5, 1.0)
                .unwrap(),
        )
        .unwrap();
        let b = Var::from_tensor(&input(1, width, 3).squeeze(0).unwrap()).unwrap();
        let c = input(rows, width, 4);
        let run = |f: &dyn Fn(&Tensor, &Tensor, &Tensor) -> Tensor| {
            let y = f(x.as_tensor(), w.as_tensor(), b.as_tensor());
            let grads = (&y * &c).unwrap().sum_all().unwrap().backward().unwrap();
            let g = |v: &Var| grads.get(v.as_tensor()).cloned();
            (y, g(&x), g(&w), g(&b))
        };
        let (ours, ref_) = (run(&f_ours), run(&f_ref));
        assert!(
            max_diff(&ours.0, &ref_.0) < tolerance,
            "forward {}",
            max_diff(&ours.0, &ref_.0)
        );
        for (name, a, b) in [
            ("x", ours.1, ref_.1),
            ("w", ours.2, ref_.2),
            ("b", ours.3, ref_.3),
        ] {
            match (a, b) {
                (Some(a), Some(b)) => {
                    let d = max_diff(&a, &b);
                    assert!(d < tolerance, "∂{name} differs by {d}");
                }
                (None, None) => {}
                (a, b) => panic!(
                    "∂{name}: ours {:?}, reference {:?}",
                    a.is_some(),
                    b.is_some()
                ),
            }
        }
    }

    #[test]
    fn layer_norm_matches_candles_autograd() {
        check(
            |x, w, b| layer_norm(x, w, b, 1e-12).unwrap(),
            |x, w, b| {
                let mean = x.mean_keepdim(D::Minus1).unwrap();
                let centred = x.broadcast_sub(&mean).unwrap();
                let var = centred.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
                let normed = centred
                    .broadcast_div(&(var + 1e-12).unwrap().sqrt().unwrap())
                    .unwrap();
                normed.broadcast_mul(w).unwrap().broadcast_add(b).unwrap()
            },
            2e-5,
        );
    }

    #[test]
    fn softmax_matches_candles_autograd() {
        check(
            |x, _, _| softmax_last_dim(x).unwrap(),
            |x, _, _| {
                let max = x.max_keepdim(D::Minus1).unwrap().detach();
                let e = x.broadcast_sub(&max).unwrap().exp().unwrap();
                e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap()
            },
            1e-6,
        );
    }

    #[test]
    fn gelu_matches_candles_autograd() {
        check(
            |x, _, _| gelu_erf(x).unwrap(),
            |x, _, _| x.gelu_erf().unwrap(),
            2e-6,
        );
    }
}
