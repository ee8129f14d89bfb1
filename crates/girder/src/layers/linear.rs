//! `nn.Linear`, dense or quantized, and in training with its weight as a variable and
//! optionally a LoRA adapter.

use super::cpu::half_matmul::HalfMatrix;
use super::cpu::quant_matmul::QuantMatrix;
use super::Dropout;
use crate::error::{Error, Result};
use crate::hub::weights::LoraPair;
use crate::hub::Weights;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Module, Tensor};
use std::sync::Arc;

/// Quantization of a floating-point checkpoint's linear layers and embedding tables at load
/// (`--quantize`, "in-situ" as mistral.rs calls it): each weight matrix becomes GGUF blocks,
/// made from the f32 values as llama.cpp's `quantize` makes them, and is multiplied by the
/// same kernel as a GGUF file's; an embedding table's rows are widened to f32 as they are
/// gathered ([`Embedding`](super::Embedding)), and a projection tied to it is multiplied
/// from the same type of blocks. Norms, biases and matrices under
/// [`MIN_QUANTIZED_ELEMENTS`] (classifier heads) stay f32.
///
/// ```
/// use girder::layers::Quantization;
/// assert_eq!(Quantization::parse("Q8_0")?, Quantization::Q8_0);
/// assert_eq!(Quantization::Q4K.name(), "q4_k");
/// # Ok::<(), girder::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Quantization {
    /// 8-bit values in blocks of 32 with an f16 scale (8.5 bits per weight).
    Q8_0,
    /// 5-bit, blocks of 32 (5.5 bits per weight).
    Q5_0,
    /// 4-bit, blocks of 32 (4.5 bits per weight).
    Q4_0,
    /// 6-bit K-quant, super-blocks of 256 (6.56 bits per weight).
    Q6K,
    /// 5-bit K-quant, super-blocks of 256 (5.5 bits per weight).
    Q5K,
    /// 4-bit K-quant, super-blocks of 256 (4.5 bits per weight).
    Q4K,
}

/// Matrices with fewer elements stay f32: a classifier head (`[labels, hidden]`) saves
/// next to nothing quantized and decides every prediction.
pub const MIN_QUANTIZED_ELEMENTS: usize = 1 << 16;

impl Quantization {
    /// Every type, in order of decreasing bits.
    pub const ALL: [Quantization; 6] = [
        Quantization::Q8_0,
        Quantization::Q6K,
        Quantization::Q5K,
        Quantization::Q5_0,
        Quantization::Q4K,
        Quantization::Q4_0,
    ];

    /// `q8_0`, `q6_k`, `q5_k`, `q5_0`, `q4_k` or `q4_0` (any case).
    pub fn parse(name: &str) -> crate::Result<Self> {
        let wanted = name.to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|q| q.name() == wanted)
            .ok_or_else(|| Error::InvalidOption {
                option: "quantize".into(),
                reason: format!(
                    "`{name}` is not a quantization girder makes; expected one of {}",
                    Self::ALL.map(Quantization::name).join(", ")
                ),
            })
    }

    /// The name `--quantize` takes (llama.cpp's type name in lower case).
    pub fn name(self) -> &'static str {
        match self {
            Quantization::Q8_0 => "q8_0",
            Quantization::Q5_0 => "q5_0",
            Quantization::Q4_0 => "q4_0",
            Quantization::Q6K => "q6_k",
            Quantization::Q5K => "q5_k",
            Quantization::Q4K => "q4_k",
        }
    }

    /// The block type of a matrix whose rows hold `row` values. K-quants need whole
    /// 256-value super-blocks; other rows fall back to the 32-value type llama.cpp's
    /// `quantize` picks for them (Q6_K → Q8_0, Q5_K → Q5_1, Q4_K → Q5_0). `None`: rows
    /// that are not whole blocks of 32 either, which stay f32.
    pub fn block_type(self, row: usize) -> Option<GgmlDType> {
        let (wanted, fallback) = match self {
            Quantization::Q8_0 => (GgmlDType::Q8_0, None),
            Quantization::Q5_0 => (GgmlDType::Q5_0, None),
            Quantization::Q4_0 => (GgmlDType::Q4_0, None),
            Quantization::Q6K => (GgmlDType::Q6K, Some(GgmlDType::Q8_0)),
            Quantization::Q5K => (GgmlDType::Q5K, Some(GgmlDType::Q5_1)),
            Quantization::Q4K => (GgmlDType::Q4K, Some(GgmlDType::Q5_0)),
        };
        if row.is_multiple_of(wanted.block_size()) {
            Some(wanted)
        } else {
            fallback.filter(|f| row.is_multiple_of(f.block_size()))
        }
    }

    /// A frozen `[out, in]` f32 weight as blocks; `None` where it stays f32 (trained,
    /// small, or rows that are not whole blocks).
    pub fn quantize(self, weight: &Tensor) -> Result<Option<QTensor>> {
        let (out_dim, in_dim) = weight.dims2()?;
        if weight.is_variable() || out_dim * in_dim < MIN_QUANTIZED_ELEMENTS {
            return Ok(None);
        }
        let Some(block_type) = self.block_type(in_dim) else {
            return Ok(None);
        };
        let weight = weight.to_dtype(candle_core::DType::F32)?.contiguous()?;
        Ok(Some(QTensor::quantize(&weight, block_type)?))
    }
}

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
    /// bf16 or f16, `[in, out]` like `DenseTransposed`, widened to f32 in the kernel
    /// ([`HalfMatrix`]).
    Half(HalfMatrix),
    /// A trained `[out, in]` variable, multiplied as it is: a copy made at load would not
    /// follow the optimizer's updates.
    Trained(Tensor),
    /// Layers side by side whose weights cannot be fused ([`Linear::concat`] of trained or
    /// adapted parts): each computes its columns.
    Parts(Vec<Linear>),
    /// The quantized frozen base of a LoRA training load (QLoRA): multiplied by the
    /// quantized kernel, and differentiable with respect to its input ([`FrozenQuantized`]).
    Frozen(FrozenQuantized),
}

/// A frozen quantized weight in a training pass (QLoRA, Dettmers et al., 2023,
/// <https://arxiv.org/abs/2305.14314>): the forward product runs the quantized kernel; the
/// backward pass gives the gradient with respect to the input, `∂x = ∂y · W`, through the
/// dequantized blocks (the weight itself has none: only the adapters beside it train).
///
/// Why the input's gradient: the adapters of earlier layers train through it.
#[derive(Debug, Clone)]
struct FrozenQuantized {
    /// What the forward product runs: [`Weight::Blocks`] or [`Weight::Quantized`].
    kernel: Box<Weight>,
    /// The same weight in the file layout, dequantized for each backward product.
    blocks: Arc<QTensor>,
}

impl FrozenQuantized {
    fn new(q: Arc<QTensor>) -> Result<Self> {
        Ok(FrozenQuantized {
            kernel: Box::new(Linear::quantized_weight(q.clone())?),
            blocks: q,
        })
    }

    fn product(&self, x: &Tensor) -> Result<Tensor> {
        match self.kernel.as_ref() {
            Weight::Blocks(m) => m.forward(x),
            Weight::Quantized(q) => Ok(q.forward(x)?),
            _ => unreachable!("FrozenQuantized::new builds a quantized kernel"),
        }
    }
}

impl candle_core::CustomOp1 for FrozenQuantized {
    fn name(&self) -> &'static str {
        "frozen-quantized-linear"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (candle_core::CpuStorage::F32(data), Some((start, end))) =
            (storage, layout.contiguous_offsets())
        else {
            candle_core::bail!("frozen-quantized-linear: a contiguous f32 input only");
        };
        let x = Tensor::from_slice(&data[start..end], layout.shape(), &candle_core::Device::Cpu)?;
        let y = self
            .product(&x)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let shape = y.shape().clone();
        Ok((
            candle_core::CpuStorage::F32(y.flatten_all()?.to_vec1()?),
            shape,
        ))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let weight = self.blocks.dequantize(grad.device())?; // [out, in]
        Ok(Some(grad.matmul(&weight)?))
    }
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

    /// Quantized when the weights keep GGUF tensors quantized or quantize at load
    /// ([`Quantization`]), a variable when a training load trains it, in bf16 or f16 when
    /// the weights keep them so ([`Weights::weight_dtype`]; matrices under
    /// [`MIN_QUANTIZED_ELEMENTS`] stay f32 as they do quantized), dense otherwise.
    fn load_weight(w: &Weights, in_dim: usize, out_dim: usize) -> Result<Weight> {
        if let Some(q) = w.qtensor([out_dim, in_dim], "weight")? {
            return Self::quantized_weight(q);
        }
        // QLoRA: a frozen base weight of a training load is quantized without being recorded
        // among the load's tensors (its f32 copy is dropped).
        if let Some(quantization) = w.quantization() {
            if w.is_training() && !w.trains("weight") && out_dim * in_dim >= MIN_QUANTIZED_ELEMENTS
            {
                let weight = w.get_frozen([out_dim, in_dim], "weight")?;
                return match quantization.quantize(&weight)? {
                    Some(q) => Ok(Weight::Frozen(FrozenQuantized::new(Arc::new(q))?)),
                    None => Self::dense(weight),
                };
            }
        }
        if out_dim * in_dim < MIN_QUANTIZED_ELEMENTS {
            return Self::dense(w.get([out_dim, in_dim], "weight")?);
        }
        Self::in_precision(w, w.get_weight([out_dim, in_dim], "weight")?)
    }

    /// A loaded `[out, in]` weight of at least [`MIN_QUANTIZED_ELEMENTS`] values in the
    /// precision the weights keep: quantized blocks, bf16 or f16, or as loaded.
    fn in_precision(w: &Weights, weight: Tensor) -> Result<Weight> {
        if let Some(quantization) = w.quantization() {
            if let Some(q) = quantization.quantize(&weight)? {
                return Self::quantized_weight(Arc::new(q));
            }
            return Self::dense(weight);
        }
        let dtype = w.weight_dtype();
        if weight.dtype() != dtype && !weight.is_variable() {
            return Self::dense(weight.to_dtype(dtype)?);
        }
        Self::dense(weight)
    }

    /// The GGUF block type of the weight, when it is quantized.
    pub fn block_type(&self) -> Option<GgmlDType> {
        match &self.weight {
            Weight::Quantized(QMatMul::QTensor(t)) => Some(t.dtype()),
            Weight::Blocks(m) => Some(m.dtype()),
            Weight::Frozen(f) => Some(f.blocks.dtype()),
            _ => None,
        }
    }

    /// An `[out, in]` weight: transposed once, unless it is trained; bf16 and f16 stay so.
    fn dense(weight: Tensor) -> Result<Weight> {
        Ok(if weight.is_variable() {
            Weight::Trained(weight)
        } else if matches!(
            weight.dtype(),
            candle_core::DType::BF16 | candle_core::DType::F16
        ) {
            Weight::Half(HalfMatrix::from_transposed(&weight.t()?, weight.dtype())?)
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

    /// The same layer with `bias` (`[out]`) in place of its own.
    pub fn with_bias(self, bias: Option<Tensor>) -> Self {
        Linear { bias, ..self }
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

    /// Loads `prefix.weight` stored `[in, out]` (GPT-2's `Conv1D`) and `prefix.bias`, in
    /// the weights' precision as [`Linear::load`] does.
    pub fn load_transposed(w: &Weights, in_dim: usize, out_dim: usize) -> Result<Self> {
        let bias = Some(w.get([out_dim], "bias")?);
        let weight_t = w.get([in_dim, out_dim], "weight")?;
        if w.is_training() || in_dim * out_dim < MIN_QUANTIZED_ELEMENTS {
            return Self::from_transposed(weight_t, bias);
        }
        Ok(Linear {
            // `[out, in]` as a view: kept dense, it is laid out `[in, out]` again without a copy.
            weight: Self::in_precision(w, weight_t.t()?)?,
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
        if parts.iter().any(|p| {
            p.lora.is_some()
                || matches!(
                    p.weight,
                    Weight::Trained(_) | Weight::Parts(_) | Weight::Frozen(_)
                )
        }) {
            return Ok(Linear {
                weight: Weight::Parts(parts.to_vec()),
                bias: None,
                lora: None,
            });
        }
        let side_by_side = || Linear {
            weight: Weight::Parts(parts.to_vec()),
            bias: None,
            lora: None,
        };
        let block_types: Option<Vec<GgmlDType>> = parts.iter().map(Linear::block_type).collect();
        let weight = match block_types {
            // Quantized parts of different block types (a Q4_K_M file's q and k in Q5_0 beside
            // v in Q8_0): each run of one type is fused, the runs sit side by side.
            Some(types) if types.iter().any(|t| *t != types[0]) => {
                let mut runs: Vec<Linear> = Vec::new();
                let mut start = 0;
                for end in 1..=parts.len() {
                    if end == parts.len() || types[end] != types[start] {
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
            Some(types) if !types.is_empty() => {
                let matrices: Option<Vec<&QuantMatrix>> = parts
                    .iter()
                    .map(|p| match &p.weight {
                        Weight::Blocks(m) => Some(m),
                        _ => None,
                    })
                    .collect();
                let tensors: Option<Vec<Arc<QTensor>>> = parts
                    .iter()
                    .map(|p| match &p.weight {
                        Weight::Quantized(QMatMul::QTensor(t)) => Some(t.clone()),
                        _ => None,
                    })
                    .collect();
                match (matrices, tensors) {
                    (Some(matrices), _) => match QuantMatrix::stack(&matrices) {
                        Some(stacked) => Weight::Blocks(stacked),
                        None => return Ok(side_by_side()),
                    },
                    (_, Some(tensors)) => Self::quantized_weight(Arc::new(
                        super::cpu::quant_matmul::concat_rows(&tensors)?,
                    ))?,
                    _ => return Ok(side_by_side()),
                }
            }
            // bf16 or f16 parts of one dtype join as they are; beside other kinds they stay
            // apart (widened, they would take f32's memory).
            _ if parts.iter().any(|p| matches!(p.weight, Weight::Half(_))) => {
                let halves: Option<Vec<&HalfMatrix>> = parts
                    .iter()
                    .map(|p| match &p.weight {
                        Weight::Half(m) => Some(m),
                        _ => None,
                    })
                    .collect();
                match halves {
                    Some(halves) if halves.iter().all(|m| m.dtype() == halves[0].dtype()) => {
                        Weight::Half(HalfMatrix::concat(&halves)?)
                    }
                    _ => return Ok(side_by_side()),
                }
            }
            // Quantized parts in AVX-512 bands beside dense ones stay apart: the bands are
            // not read back as f32.
            _ if parts
                .iter()
                .any(|p| matches!(&p.weight, Weight::Blocks(m) if m.to_qtensor().is_none())) =>
            {
                return Ok(side_by_side())
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
                        p.out_dim()?,
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

    /// The number of outputs.
    fn out_dim(&self) -> Result<usize> {
        Ok(match &self.weight {
            Weight::DenseTransposed(wt) => wt.dim(1)?,
            Weight::Half(m) => m.dims().1,
            Weight::Trained(w) => w.dim(0)?,
            Weight::Quantized(q) => match q {
                QMatMul::QTensor(t) => t.shape().dims()[0],
                QMatMul::Tensor(t) | QMatMul::TensorF16(t) => t.dim(0)?,
            },
            Weight::Blocks(m) => m.dims().0,
            Weight::Frozen(f) => f.blocks.shape().dims()[0],
            Weight::Parts(parts) => parts.iter().map(Linear::out_dim).sum::<Result<usize>>()?,
        })
    }

    /// The weight as a dense f32 `[in, out]` matrix.
    fn dense_transposed(&self) -> Result<Tensor> {
        let w = match &self.weight {
            Weight::DenseTransposed(wt) => return Ok(wt.clone()),
            Weight::Half(m) => return m.to_f32(),
            Weight::Quantized(QMatMul::QTensor(t)) => t.dequantize(&t.device())?,
            Weight::Quantized(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => t.clone(),
            Weight::Blocks(m) => match m.to_qtensor() {
                Some(t) => t?.dequantize(&candle_core::Device::Cpu)?,
                None => {
                    return Err(Error::Unsupported {
                        what: "reading quantized weights in AVX-512 bands back as f32".into(),
                    })
                }
            },
            Weight::Trained(w) => w.clone(),
            Weight::Frozen(f) => f.blocks.dequantize(&f.blocks.device())?,
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
            Weight::Half(m) => m.forward(x)?,
            Weight::Frozen(f) if x.track_op() => x.contiguous()?.apply_op1(f.clone())?,
            Weight::Frozen(f) => f.product(x)?,
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn k_quants_fall_back_where_rows_are_not_whole_super_blocks() {
        assert_eq!(Quantization::Q4K.block_type(1536), Some(GgmlDType::Q4K));
        // MiniLM's hidden size, 384: 1.5 super-blocks.
        assert_eq!(Quantization::Q4K.block_type(384), Some(GgmlDType::Q5_0));
        assert_eq!(Quantization::Q5K.block_type(384), Some(GgmlDType::Q5_1));
        assert_eq!(Quantization::Q6K.block_type(384), Some(GgmlDType::Q8_0));
        assert_eq!(Quantization::Q8_0.block_type(384), Some(GgmlDType::Q8_0));
        assert_eq!(Quantization::Q8_0.block_type(100), None);
    }

    #[test]
    fn quantized_parts_fuse_from_their_blocks_bit_for_bit() {
        let device = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (5, 256), &device).unwrap();
        let part = |rows: usize| {
            let w = Tensor::randn(0f32, 0.05, (rows, 256), &device).unwrap();
            let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
            Linear::from_qtensor(Arc::new(q), None).unwrap()
        };
        // Full bands of 16 rows, then a last part that ends in a partial band (joined); and
        // a first part that ends in one (AVX-512 bands cannot be joined there, so the parts
        // stay side by side; file-layout blocks are joined).
        for (rows, joined) in [([48, 32, 40], true), ([40, 48, 16], false)] {
            let parts: Vec<Linear> = rows.iter().map(|&r| part(r)).collect();
            let fused = Linear::concat(&parts).unwrap();
            if joined {
                assert_eq!(fused.block_type(), Some(GgmlDType::Q8_0), "{rows:?}");
            }
            let apart: Vec<Tensor> = parts.iter().map(|p| p.forward(&x).unwrap()).collect();
            let expected = Tensor::cat(&apart, 1).unwrap().to_vec2::<f32>().unwrap();
            assert_eq!(
                fused.forward(&x).unwrap().to_vec2::<f32>().unwrap(),
                expected
            );
        }
    }

    /// `[rows, cols]` normal values of standard deviation `std`, the same on every run.
    fn seeded(rows: usize, cols: usize, std: f64, seed: u64) -> Tensor {
        let mut rng = crate::rng::Rng::new(seed);
        let values: Vec<f32> = (0..rows * cols)
            .map(|_| (rng.normal() * std) as f32)
            .collect();
        Tensor::from_vec(values, (rows, cols), &Device::Cpu).unwrap()
    }

    /// QLoRA's frozen quantized weight: the forward product is the kernel's, and the
    /// gradient reaching the input is the one through the dequantized matrix.
    #[test]
    fn frozen_quantized_weights_pass_the_gradient_to_their_input() {
        let w = seeded(256, 512, 0.05, 3);
        let q = Arc::new(Quantization::Q8_0.quantize(&w).unwrap().expect("quantized"));
        let frozen = Linear {
            weight: Weight::Frozen(FrozenQuantized::new(q.clone()).unwrap()),
            bias: None,
            lora: None,
        };
        let x = candle_core::Var::from_tensor(&seeded(5, 512, 1.0, 4)).unwrap();
        let upstream = seeded(5, 256, 1.0, 5);
        let y = frozen.forward(x.as_tensor()).unwrap();
        let kernel = Linear::from_qtensor(q.clone(), None)
            .unwrap()
            .forward(x.as_tensor())
            .unwrap();
        assert_eq!(
            y.to_vec2::<f32>().unwrap(),
            kernel.to_vec2::<f32>().unwrap()
        );
        let grads = (&y * &upstream)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let got = grads.get(x.as_tensor()).expect("a gradient for x");
        let expected = upstream
            .matmul(&q.dequantize(&Device::Cpu).unwrap())
            .unwrap();
        let diff = (got - &expected)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-4, "gradient off by {diff}");
    }

    #[test]
    fn large_frozen_weights_quantize_and_stay_close() {
        let device = Device::Cpu;
        let w = seeded(256, 512, 0.05, 1);
        let x = seeded(7, 512, 1.0, 2);
        let dense = Linear::from_parts(w.clone(), None)
            .unwrap()
            .forward(&x)
            .unwrap();
        // Relative errors of 0.007 (8 bits) and 0.075 (4 bits) for these Gaussian weights,
        // activations rounded to 8 bits included.
        for (q, tolerance) in [(Quantization::Q8_0, 0.015), (Quantization::Q4K, 0.12)] {
            let blocks = q.quantize(&w).unwrap().expect("quantized");
            let layer = Linear::from_qtensor(Arc::new(blocks), None).unwrap();
            assert_eq!(layer.block_type(), q.block_type(512));
            let y = layer.forward(&x).unwrap();
            let err = (&y - &dense).unwrap().sqr().unwrap().sum_all().unwrap();
            let norm = dense.sqr().unwrap().sum_all().unwrap();
            let relative =
                (err.to_scalar::<f32>().unwrap() / norm.to_scalar::<f32>().unwrap()).sqrt();
            eprintln!("{q:?}: relative error {relative}");
            assert!(relative < tolerance, "{q:?}: relative error {relative}");
        }
        // A classifier head's matrix and a trained variable stay f32.
        let head = Tensor::randn(0f32, 0.05, (2, 384), &device).unwrap();
        assert!(Quantization::Q8_0.quantize(&head).unwrap().is_none());
        let trained = candle_core::Var::from_tensor(&w).unwrap();
        assert!(Quantization::Q8_0
            .quantize(trained.as_tensor())
            .unwrap()
            .is_none());
        assert_eq!(w.dtype(), DType::F32);
    }
}
