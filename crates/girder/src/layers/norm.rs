use super::kernels::f32s;
use super::team;
use crate::error::Result;
use crate::hub::Weights;
use candle_core::Tensor;
use std::mem::MaybeUninit;

/// Layer normalization (Ba et al. 2016) over the last dimension:
/// `(x − mean) / sqrt(var + eps) · weight + bias`, transformers' `nn.LayerNorm`.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

/// Loads `prefix.weight` / `prefix.bias` `[dim]` as a LayerNorm (falling back to the
/// `gamma` / `beta` names of old TensorFlow-converted BERT checkpoints, as transformers does).
pub fn layer_norm(w: &Weights, dim: usize, eps: f64) -> Result<LayerNorm> {
    let weight = w.get_either([dim], "weight", "gamma")?;
    let bias = w.get_either([dim], "bias", "beta")?;
    Ok(LayerNorm {
        weight,
        bias,
        eps: eps as f32,
    })
}

impl candle_nn::Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let norm = |row: &[f32], weight: &[f32], bias: &[f32], out: &mut [MaybeUninit<f32>]| {
            let n = row.len() as f32;
            // Two passes, as PyTorch: the variance of the centred values, not E[x²] − mean²,
            // which loses digits when the mean is large.
            let mean = lane_sum(row, |v| v) / n;
            let inv_std = 1.0 / (lane_sum(row, |v| (v - mean) * (v - mean)) / n + self.eps).sqrt();
            for (((o, &v), &w), &b) in out.iter_mut().zip(row).zip(weight).zip(bias) {
                o.write((v - mean) * inv_std * w + b);
            }
        };
        match rows_of(x, &self.weight, Some(&self.bias), norm)? {
            Some(y) => Ok(y),
            None => candle_nn::ops::layer_norm(x, &self.weight, &self.bias, self.eps),
        }
    }
}

/// Root-mean-square norm (Zhang & Sennrich 2019): `x / sqrt(mean(x²) + eps) · weight`,
/// transformers' `LlamaRMSNorm`.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    /// Loads `prefix.weight` `[dim]`.
    pub fn load(w: &Weights, dim: usize, eps: f64) -> Result<Self> {
        Ok(RmsNorm {
            weight: w.get([dim], "weight")?,
            eps: eps as f32,
        })
    }

    /// Builds the norm from a weight already loaded (`[dim]`).
    pub fn from_weight(weight: Tensor, eps: f64) -> Self {
        RmsNorm {
            weight,
            eps: eps as f32,
        }
    }

    /// `x`: `[n, dim]` → `[n, dim]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let norm = |row: &[f32], weight: &[f32], _: &[f32], out: &mut [MaybeUninit<f32>]| {
            let mean_square = lane_sum(row, |v| v * v) / row.len() as f32;
            let inv_rms = 1.0 / (mean_square + self.eps).sqrt();
            for ((o, &v), &w) in out.iter_mut().zip(row).zip(weight) {
                o.write(v * inv_rms * w);
            }
        };
        match rows_of(x, &self.weight, None, norm)? {
            Some(y) => Ok(y),
            None => Ok(candle_nn::ops::rms_norm(x, &self.weight, self.eps)?),
        }
    }
}

/// `Σ f(x)` in 16 partial sums (vectorizable, and a fixed order: the same for a row wherever
/// it is computed).
fn lane_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; 16];
    let mut chunks = xs.chunks_exact(16);
    for chunk in &mut chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += f(v);
        }
    }
    for (lane, &v) in lanes.iter_mut().zip(chunks.remainder()) {
        *lane += f(v);
    }
    lanes.iter().sum()
}

/// `norm(row, weight, bias, out)` for every row of `x` on the [`team`], into a new tensor
/// (`norm` writes every value of `out`); `None` where candle's op must run instead
/// (gradients, another dtype or device, a view).
fn rows_of(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    norm: impl Fn(&[f32], &[f32], &[f32], &mut [MaybeUninit<f32>]) + Sync,
) -> candle_core::Result<Option<Tensor>> {
    let plain = super::kernels::fast_path;
    let width = x.dims().last().copied().unwrap_or(0);
    if !plain(x) || !plain(weight) || !bias.is_none_or(plain) || weight.elem_count() != width {
        return Ok(None);
    }
    let (xs, x_layout) = x.storage_and_layout();
    let (ws, w_layout) = weight.storage_and_layout();
    let bs = bias.map(|b| b.storage_and_layout());
    let (Some(rows_in), Some(weight)) = (f32s(&xs, x_layout), f32s(&ws, w_layout)) else {
        return Ok(None);
    };
    let bias = match &bs {
        Some((s, l)) => match f32s(s, l) {
            Some(b) => b,
            None => return Ok(None),
        },
        None => &[],
    };
    // Rows of zero width: an empty tensor.
    let rows_per_task = 4096usize.checked_div(width).unwrap_or(1).max(1);
    let out = team::collect_chunks(rows_in.len(), rows_per_task * width, |i, chunk| {
        let first = i * rows_per_task * width;
        for (r, o) in chunk.chunks_mut(width).enumerate() {
            let row = &rows_in[first + r * width..][..width];
            norm(row, weight, bias, o);
        }
    });
    drop((xs, ws, bs));
    Ok(Some(Tensor::from_vec(out, x.shape(), x.device())?))
}
