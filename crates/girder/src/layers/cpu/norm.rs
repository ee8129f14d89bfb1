//! The norms' row kernel: each row normalised in one pass over its values (16 partial sums
//! in a fixed order, so a row gives the same result wherever it is computed), rows split
//! over the [`team`]'s threads, written straight into the output.

use super::kernels::{f32s, fast_path};
use super::team;
use candle_core::Tensor;
use std::mem::MaybeUninit;

/// `(x − mean) / sqrt(var + eps) · weight + bias` over the last dimension; `None` where
/// candle's op must run instead (gradients, another dtype or device, a view).
pub(crate) fn layer_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f32,
) -> candle_core::Result<Option<Tensor>> {
    let norm = |row: &[f32], weight: &[f32], bias: &[f32], out: &mut [MaybeUninit<f32>]| {
        let n = row.len() as f32;
        // Two passes, as PyTorch: the variance of the centred values, not E[x²] − mean²,
        // which loses digits when the mean is large.
        let mean = lane_sum(row, |v| v) / n;
        let inv_std = 1.0 / (lane_sum(row, |v| (v - mean) * (v - mean)) / n + eps).sqrt();
        for (((o, &v), &w), &b) in out.iter_mut().zip(row).zip(weight).zip(bias) {
            o.write((v - mean) * inv_std * w + b);
        }
    };
    rows_of(x, weight, Some(bias), norm)
}

/// `x / sqrt(mean(x²) + eps) · weight` over the last dimension; `None` as for
/// [`layer_norm`].
pub(crate) fn rms_norm(
    x: &Tensor,
    weight: &Tensor,
    eps: f32,
) -> candle_core::Result<Option<Tensor>> {
    let norm = |row: &[f32], weight: &[f32], _: &[f32], out: &mut [MaybeUninit<f32>]| {
        let mean_square = lane_sum(row, |v| v * v) / row.len() as f32;
        let inv_rms = 1.0 / (mean_square + eps).sqrt();
        for ((o, &v), &w) in out.iter_mut().zip(row).zip(weight) {
            o.write(v * inv_rms * w);
        }
    };
    rows_of(x, weight, None, norm)
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
    let plain = fast_path;
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
