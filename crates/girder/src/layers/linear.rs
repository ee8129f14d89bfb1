use crate::error::Result;
use crate::hub::Weights;
use candle_core::Tensor;

/// `y = x Wᵀ + b`, with the checkpoint's `[out, in]` weight layout (PyTorch's `nn.Linear`).
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// Loads `prefix.weight` `[out, in]` and `prefix.bias` `[out]`.
    pub fn load(w: &Weights, in_dim: usize, out_dim: usize) -> Result<Self> {
        Ok(Linear {
            weight: w.get([out_dim, in_dim], "weight")?,
            bias: Some(w.get([out_dim], "bias")?),
        })
    }

    /// Loads a layer without bias.
    pub fn load_no_bias(w: &Weights, in_dim: usize, out_dim: usize) -> Result<Self> {
        Ok(Linear {
            weight: w.get([out_dim, in_dim], "weight")?,
            bias: None,
        })
    }

    /// Builds a layer from tensors already loaded (a tied decoder reuses the embedding table).
    pub fn from_parts(weight: Tensor, bias: Option<Tensor>) -> Self {
        Linear { weight, bias }
    }

    /// `x`: `[n, in]` → `[n, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.matmul(&self.weight.t()?)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}
