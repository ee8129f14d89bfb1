use crate::error::Result;
use crate::hub::Weights;
use candle_nn::LayerNorm;

/// Loads `prefix.weight` / `prefix.bias` `[dim]` as a LayerNorm (falling back to the
/// `gamma` / `beta` names of old TensorFlow-converted BERT checkpoints, as transformers does).
pub fn layer_norm(w: &Weights, dim: usize, eps: f64) -> Result<LayerNorm> {
    let weight = w.get_either([dim], "weight", "gamma")?;
    let bias = w.get_either([dim], "bias", "beta")?;
    Ok(LayerNorm::new(weight, bias, eps))
}

/// Root-mean-square norm (Zhang & Sennrich 2019): `x / sqrt(mean(x²) + eps) · weight`,
/// transformers' `LlamaRMSNorm`.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: candle_core::Tensor,
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
    pub fn from_weight(weight: candle_core::Tensor, eps: f64) -> Self {
        RmsNorm {
            weight,
            eps: eps as f32,
        }
    }

    /// `x`: `[n, dim]` → `[n, dim]`.
    pub fn forward(&self, x: &candle_core::Tensor) -> Result<candle_core::Tensor> {
        Ok(candle_nn::ops::rms_norm(x, &self.weight, self.eps)?)
    }
}
