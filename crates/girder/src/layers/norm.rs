//! LayerNorm and RMSNorm: girder's row kernel on the CPU ([`super::cpu::norm`]), candle's
//! ops on any other device or when gradients are tracked.

use super::cpu;
use crate::error::Result;
use crate::hub::Weights;
use candle_core::Tensor;

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
        if let Some(y) = cpu::norm::layer_norm(x, &self.weight, &self.bias, self.eps)? {
            return Ok(y);
        }
        let (w, b) = (&self.weight, &self.bias);
        if !(x.track_op() || w.track_op() || b.track_op()) {
            return candle_nn::ops::layer_norm(x, w, b, self.eps);
        }
        // Training: candle's fused op has no backward pass.
        if cpu::kernels::trains_on_cpu(x) || cpu::kernels::trains_on_cpu(w) {
            return cpu::autograd::layer_norm(x, w, b, self.eps as f64)
                .map_err(|e| candle_core::Error::Msg(e.to_string()));
        }
        let mean = x.mean_keepdim(candle_core::D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(candle_core::D::Minus1)?;
        centred
            .broadcast_div(&(var + self.eps as f64)?.sqrt()?)?
            .broadcast_mul(w)?
            .broadcast_add(b)
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
        match cpu::norm::rms_norm(x, &self.weight, self.eps)? {
            Some(y) => Ok(y),
            None => Ok(candle_nn::ops::rms_norm(x, &self.weight, self.eps)?),
        }
    }
}
