use crate::error::Result;
use crate::hub::Weights;
use candle_core::quantized::QMatMul;
use candle_core::{Module, Tensor};

/// The weight of a [`Linear`]: dense `[out, in]`, or quantized (GGUF blocks, multiplied by
/// candle's quantized matmul without dequantizing).
#[derive(Debug, Clone)]
enum Weight {
    Dense(Tensor),
    Quantized(QMatMul),
}

/// `y = x Wᵀ + b`, with the checkpoint's `[out, in]` weight layout (PyTorch's `nn.Linear`).
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
}

impl Linear {
    /// Loads `prefix.weight` `[out, in]` and `prefix.bias` `[out]`.
    pub fn load(w: &Weights, in_dim: usize, out_dim: usize) -> Result<Self> {
        Ok(Linear {
            weight: Self::load_weight(w, in_dim, out_dim)?,
            bias: Some(w.get([out_dim], "bias")?),
        })
    }

    /// Loads a layer without bias.
    pub fn load_no_bias(w: &Weights, in_dim: usize, out_dim: usize) -> Result<Self> {
        Ok(Linear {
            weight: Self::load_weight(w, in_dim, out_dim)?,
            bias: None,
        })
    }

    /// Quantized when the weights keep GGUF tensors quantized, dense otherwise.
    fn load_weight(w: &Weights, in_dim: usize, out_dim: usize) -> Result<Weight> {
        Ok(match w.qmatmul([out_dim, in_dim], "weight")? {
            Some(q) => Weight::Quantized(q),
            None => Weight::Dense(w.get([out_dim, in_dim], "weight")?),
        })
    }

    /// Builds a layer from tensors already loaded (a tied decoder reuses the embedding table).
    pub fn from_parts(weight: Tensor, bias: Option<Tensor>) -> Self {
        Linear {
            weight: Weight::Dense(weight),
            bias,
        }
    }

    /// Builds a layer from a quantized `[out, in]` matrix.
    pub fn from_qmatmul(weight: QMatMul, bias: Option<Tensor>) -> Self {
        Linear {
            weight: Weight::Quantized(weight),
            bias,
        }
    }

    /// `x`: `[n, in]` → `[n, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.weight {
            Weight::Dense(w) => x.matmul(&w.t()?)?,
            Weight::Quantized(q) => q.forward(x)?,
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}
