use super::quant_matmul::QuantMatrix;
use crate::error::Result;
use crate::hub::Weights;
use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Module, Tensor};
use std::sync::Arc;

/// The weight of a [`Linear`]: dense, stored transposed as a contiguous `[in, out]`
/// matrix, or quantized (GGUF blocks, multiplied by candle's quantized matmul without
/// dequantizing).
///
/// Why transposed: the `gemm` crate behind candle's matmul runs 10-40% faster on MiniLM's
/// shapes with a contiguous `[in, out]` right-hand side than with the strided view
/// `W.t()` of the checkpoint's `[out, in]` (e.g. 581x384x1536: 85 vs 100-128 GFLOP/s;
/// 17x384x384: 23 vs 32), so the copy is paid once at load instead of in every product.
#[derive(Debug, Clone)]
enum Weight {
    DenseTransposed(Tensor),
    Quantized(QMatMul),
    /// Q4_1 / Q8_0 through girder's kernel ([`QuantMatrix`]): candle's Q4_1 is scalar.
    Blocks(QuantMatrix),
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
        Ok(match w.qtensor([out_dim, in_dim], "weight")? {
            Some(q) => Self::quantized_weight(q)?,
            None => Weight::DenseTransposed(w.get([out_dim, in_dim], "weight")?.t()?.contiguous()?),
        })
    }

    fn quantized_weight(q: Arc<QTensor>) -> Result<Weight> {
        Ok(match QuantMatrix::from_qtensor(&q)? {
            Some(m) => Weight::Blocks(m),
            None => Weight::Quantized(QMatMul::from_arc(q)?),
        })
    }

    /// Builds a layer from an `[out, in]` weight already loaded (a tied decoder reuses the
    /// embedding table).
    pub fn from_parts(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        Ok(Linear {
            weight: Weight::DenseTransposed(weight.t()?.contiguous()?),
            bias,
        })
    }

    /// Builds a layer from a weight already in `[in, out]` layout (GPT-2's `Conv1D`).
    pub fn from_transposed(weight_t: Tensor, bias: Option<Tensor>) -> Result<Self> {
        Ok(Linear {
            weight: Weight::DenseTransposed(weight_t.contiguous()?),
            bias,
        })
    }

    /// Builds a layer from a quantized `[out, in]` tensor (e.g. a tied GGUF embedding).
    pub fn from_qtensor(weight: Arc<QTensor>, bias: Option<Tensor>) -> Result<Self> {
        Ok(Linear {
            weight: Self::quantized_weight(weight)?,
            bias,
        })
    }

    /// `x`: `[n, in]` → `[n, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.weight {
            Weight::DenseTransposed(wt) => x.broadcast_matmul(wt)?,
            Weight::Quantized(q) => q.forward(x)?,
            Weight::Blocks(m) => m.forward(x)?,
        };
        Ok(match &self.bias {
            Some(b) => super::kernels::add_in_place(y, b)?,
            None => y,
        })
    }
}
