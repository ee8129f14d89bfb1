//! `nn.Linear`, dense or quantized, and in training with its weight as a variable and
//! optionally a LoRA adapter.

use super::cpu::quant_matmul::QuantMatrix;
use super::Dropout;
use crate::error::Result;
use crate::hub::weights::LoraPair;
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
    /// GGUF block types girder's kernel reads ([`QuantMatrix`]): candle's are scalar.
    Blocks(QuantMatrix),
    /// A trained `[out, in]` variable, multiplied as it is: a copy made at load would not
    /// follow the optimizer's updates.
    Trained(Tensor),
    /// Layers side by side whose weights cannot be fused ([`Linear::concat`] of trained or
    /// adapted parts): each computes its columns.
    Parts(Vec<Linear>),
}

/// Where the parts' biases live (a part without one gets zeros there).
fn b_device(parts: &[Linear]) -> &candle_core::Device {
    parts
        .iter()
        .find_map(|p| p.bias.as_ref().map(|b| b.device()))
        .unwrap_or(&candle_core::Device::Cpu)
}

/// `y = x Wᵀ + b`, with the checkpoint's `[out, in]` weight layout (PyTorch's `nn.Linear`),
/// plus `(B A dropout(x)) · scaling` when a training load gave it a LoRA adapter.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
    lora: Option<LoraPair>,
}

impl Linear {
    /// Loads `prefix.weight` `[out, in]` and `prefix.bias` `[out]`.
    pub fn load(w: &Weights, in_dim: usize, out_dim: usize) -> Result<Self> {
        Ok(Linear {
            weight: Self::load_weight(w, in_dim, out_dim)?,
            bias: Some(w.get([out_dim], "bias")?),
            lora: w.lora(in_dim, out_dim)?,
        })
    }

    /// Loads a layer without bias.
    pub fn load_no_bias(w: &Weights, in_dim: usize, out_dim: usize) -> Result<Self> {
        Ok(Linear {
            weight: Self::load_weight(w, in_dim, out_dim)?,
            bias: None,
            lora: w.lora(in_dim, out_dim)?,
        })
    }

    /// Quantized when the weights keep GGUF tensors quantized, a variable when a training
    /// load trains it, dense otherwise.
    fn load_weight(w: &Weights, in_dim: usize, out_dim: usize) -> Result<Weight> {
        Ok(match w.qtensor([out_dim, in_dim], "weight")? {
            Some(q) => Self::quantized_weight(q)?,
            None => Self::dense(w.get([out_dim, in_dim], "weight")?)?,
        })
    }

    /// An `[out, in]` weight: transposed once, unless it is trained.
    fn dense(weight: Tensor) -> Result<Weight> {
        Ok(if weight.is_variable() {
            Weight::Trained(weight)
        } else {
            Weight::DenseTransposed(weight.t()?.contiguous()?)
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
            weight: Self::dense(weight)?,
            bias,
            lora: None,
        })
    }

    /// Builds a layer from a weight already in `[in, out]` layout (GPT-2's `Conv1D`).
    pub fn from_transposed(weight_t: Tensor, bias: Option<Tensor>) -> Result<Self> {
        Ok(Linear {
            weight: Weight::DenseTransposed(weight_t.contiguous()?),
            bias,
            lora: None,
        })
    }

    /// Builds a layer from a quantized `[out, in]` tensor (e.g. a tied GGUF embedding).
    pub fn from_qtensor(weight: Arc<QTensor>, bias: Option<Tensor>) -> Result<Self> {
        Ok(Linear {
            weight: Self::quantized_weight(weight)?,
            bias,
            lora: None,
        })
    }

    /// One layer computing `parts` side by side (they share `in`): `[n, in]` →
    /// `[n, Σ out]`, each part's outputs in order, bit for bit what the parts compute apart
    /// (each output is the same dot product).
    ///
    /// Why: a decode step multiplies a single row, where each product's fixed costs (a
    /// parallel region, rounding the activations to bytes) rival its arithmetic; q, k and v
    /// (or gate and up) as one product pay them once instead of three (twice) times.
    ///
    /// ```
    /// # use girder::layers::Linear;
    /// # use candle_core::{Device, Tensor};
    /// let w = |rows: usize| Tensor::randn(0f32, 1.0, (rows, 4), &Device::Cpu).unwrap();
    /// let (a, b) = (Linear::from_parts(w(3), None)?, Linear::from_parts(w(2), None)?);
    /// let x = Tensor::randn(0f32, 1.0, (5, 4), &Device::Cpu)?;
    /// let both = Linear::concat(&[a.clone(), b])?.forward(&x)?;
    /// assert_eq!(both.dims(), [5, 5]);
    /// assert_eq!(both.narrow(1, 0, 3)?.to_vec2::<f32>()?, a.forward(&x)?.to_vec2::<f32>()?);
    /// # Ok::<(), girder::Error>(())
    /// ```
    pub fn concat(parts: &[Linear]) -> Result<Linear> {
        // Trained or adapted parts stay apart: a fused copy would not follow their updates.
        if parts
            .iter()
            .any(|p| p.lora.is_some() || matches!(p.weight, Weight::Trained(_) | Weight::Parts(_)))
        {
            return Ok(Linear {
                weight: Weight::Parts(parts.to_vec()),
                bias: None,
                lora: None,
            });
        }
        let quantized: Option<Vec<Arc<QTensor>>> = parts
            .iter()
            .map(|p| match &p.weight {
                Weight::Quantized(QMatMul::QTensor(t)) => Some(t.clone()),
                Weight::Blocks(m) => Some(m.qtensor().clone()),
                _ => None,
            })
            .collect();
        let weight = match quantized {
            // Quantized parts of different block types (a Q4_K_M file's q and k in Q5_0 beside
            // v in Q8_0): each run of one type is fused, the runs sit side by side.
            Some(qs) if qs.iter().any(|q| q.dtype() != qs[0].dtype()) => {
                let mut runs: Vec<Linear> = Vec::new();
                let mut start = 0;
                for end in 1..=parts.len() {
                    if end == parts.len() || qs[end].dtype() != qs[start].dtype() {
                        runs.push(Linear::concat(&parts[start..end])?);
                        start = end;
                    }
                }
                return Ok(Linear {
                    weight: Weight::Parts(runs),
                    bias: None,
                    lora: None,
                });
            }
            Some(qs) if !qs.is_empty() => {
                Self::quantized_weight(Arc::new(super::cpu::quant_matmul::concat_rows(&qs)?))?
            }
            // Dense, or a mix (f16 GGUF tensors next to quantized ones): f32.
            _ => {
                let wts = parts
                    .iter()
                    .map(|p| p.dense_transposed())
                    .collect::<Result<Vec<_>>>()?;
                Weight::DenseTransposed(Tensor::cat(&wts, 1)?)
            }
        };
        let bias = if parts.iter().all(|p| p.bias.is_none()) {
            None
        } else {
            let biases = parts
                .iter()
                .map(|p| match &p.bias {
                    Some(b) => Ok(b.clone()),
                    None => Ok(Tensor::zeros(
                        p.dense_transposed()?.dim(1)?,
                        candle_core::DType::F32,
                        b_device(parts),
                    )?),
                })
                .collect::<Result<Vec<_>>>()?;
            Some(Tensor::cat(&biases, 0)?)
        };
        Ok(Linear {
            weight,
            bias,
            lora: None,
        })
    }

    /// The weight as a dense f32 `[in, out]` matrix.
    fn dense_transposed(&self) -> Result<Tensor> {
        let w = match &self.weight {
            Weight::DenseTransposed(wt) => return Ok(wt.clone()),
            Weight::Quantized(QMatMul::QTensor(t)) => t.dequantize(&t.device())?,
            Weight::Quantized(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => t.clone(),
            Weight::Blocks(m) => m.qtensor().dequantize(&m.qtensor().device())?,
            Weight::Trained(w) => w.clone(),
            Weight::Parts(parts) => {
                let wts = parts
                    .iter()
                    .map(|p| p.dense_transposed())
                    .collect::<Result<Vec<_>>>()?;
                return Ok(Tensor::cat(&wts, 1)?);
            }
        };
        Ok(w.to_dtype(candle_core::DType::F32)?.t()?.contiguous()?)
    }

    /// `x`: `[n, in]` → `[n, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.weight {
            Weight::DenseTransposed(wt) => {
                match super::cpu::skinny_matmul::matmul_tensors(x, wt)? {
                    Some(y) => y,
                    None => {
                        super::cpu::team::rest();
                        x.broadcast_matmul(wt)?
                    }
                }
            }
            Weight::Quantized(q) => q.forward(x)?,
            Weight::Blocks(m) => m.forward(x)?,
            Weight::Trained(w) => x.broadcast_matmul(&w.t()?)?,
            Weight::Parts(parts) => {
                let outs = parts
                    .iter()
                    .map(|p| p.forward(x))
                    .collect::<Result<Vec<_>>>()?;
                Tensor::cat(&outs, 1)?
            }
        };
        let y = match &self.bias {
            Some(b) => super::cpu::kernels::add_in_place(y, b)?,
            None => y,
        };
        let Some(lora) = &self.lora else {
            return Ok(y);
        };
        let x = Dropout::new(lora.dropout).forward(x.clone())?;
        let delta = x
            .broadcast_matmul(&lora.a.t()?)?
            .broadcast_matmul(&lora.b.t()?)?;
        Ok((y + (delta * lora.scaling)?)?)
    }

    /// The outputs `columns` of [`forward`](Self::forward), `[n, columns.len()]`. Layers side
    /// by side ([`Linear::concat`] of trained parts) compute only the parts the range covers,
    /// so a fused q, k, v in training computes the keys and values of every token without
    /// their queries; other layers compute every output and keep the range.
    pub fn forward_columns(&self, x: &Tensor, columns: std::ops::Range<usize>) -> Result<Tensor> {
        if let Weight::Parts(parts) = &self.weight {
            let mut start = 0;
            let mut picked = Vec::new();
            for part in parts {
                let Some(out) = part.trained_out_dim() else {
                    break;
                };
                if start >= columns.start && start + out <= columns.end {
                    picked.push(part.forward(x)?);
                }
                start += out;
            }
            let covered: usize = picked
                .iter()
                .map(|y| y.dim(1))
                .sum::<candle_core::Result<_>>()?;
            if covered == columns.len() && !picked.is_empty() {
                return Ok(match picked.len() {
                    1 => picked.remove(0),
                    _ => Tensor::cat(&picked, 1)?,
                });
            }
        }
        Ok(self.forward(x)?.narrow(1, columns.start, columns.len())?)
    }

    /// The number of outputs of a trained part (a [`Weight::Trained`] weight).
    fn trained_out_dim(&self) -> Option<usize> {
        match &self.weight {
            Weight::Trained(w) => w.dim(0).ok(),
            _ => None,
        }
    }
}
