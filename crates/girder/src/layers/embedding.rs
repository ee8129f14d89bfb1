//! `nn.Embedding`: a lookup table whose rows are gathered by id, kept in f32, in bf16 or
//! f16, or quantized.

use super::linear::{Linear, Quantization, MIN_QUANTIZED_ELEMENTS};
use super::training;
use crate::error::{Error, Result};
use crate::hub::Weights;
use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use std::sync::Arc;

/// A lookup table `[rows, dim]`; `forward` gathers rows by id and returns them in f32.
///
/// The table is kept as the weights say: in their [`weight_dtype`](Weights::weight_dtype)
/// (bf16 or f16 halve a vocabulary's memory), or, when they quantize at load
/// ([`Weights::quantization`]), in GGUF blocks of the same type as the linear layers (a
/// vocabulary is most of a small encoder's weights: 47 of all-MiniLM-L6-v2's 90 MB). Only
/// the gathered rows are ever widened to f32.
///
/// ```
/// # use girder::layers::Embedding;
/// # use candle_core::{Device, Tensor};
/// let table = Tensor::arange(0f32, 6.0, &Device::Cpu)?.reshape((3, 2))?;
/// let rows = Embedding::from_table(table).forward(&Tensor::new(&[2u32, 0], &Device::Cpu)?)?;
/// assert_eq!(rows.to_vec2::<f32>()?, [[4.0, 5.0], [0.0, 1.0]]);
/// # Ok::<(), girder::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Embedding {
    table: Table,
    /// The checkpoint a table rounded or quantized at load came from: what a lock's
    /// fingerprint reads ([`Embedding::checkpoint_table`]), and a tied output projection
    /// kept in f32 ([`Weights::keeps_output_in_f32`]).
    reduced_from: Option<Weights>,
}

#[derive(Debug, Clone)]
enum Table {
    /// f32, bf16 or f16.
    Dense(Tensor),
    /// Rows of GGUF blocks as llama.cpp stores them, on the CPU.
    Blocks(Arc<BlockRows>),
}

#[derive(Debug)]
struct BlockRows {
    rows: usize,
    dim: usize,
    dtype: GgmlDType,
    /// `rows · row_bytes`.
    bytes: Vec<u8>,
    row_bytes: usize,
}

impl Embedding {
    /// Loads `prefix.weight` with shape `[rows, dim]`. A GGUF file's table stays in its
    /// blocks (Qwen2.5-0.5B's vocabulary is 545 MB in f32, 103 MB in its file's Q4_K).
    pub fn load(w: &Weights, rows: usize, dim: usize) -> Result<Self> {
        if let Some(q) = w.qtensor([rows, dim], "weight")? {
            if let Some(blocks) = BlockRows::of(&q)? {
                return Ok(Embedding {
                    table: Table::Blocks(Arc::new(blocks)),
                    reduced_from: None,
                });
            }
        }
        if let Some(quantization) = w.quantization().filter(|_| !w.is_training()) {
            if rows * dim >= MIN_QUANTIZED_ELEMENTS {
                if let Some(dtype) = quantization.block_type(dim) {
                    let table = w.get([rows, dim], "weight")?;
                    return Ok(Embedding {
                        reduced_from: Some(w.clone()),
                        ..Self::quantized(&table, dtype, quantization)?
                    });
                }
            }
        }
        let table = w.get_weight([rows, dim], "weight")?;
        Ok(Embedding {
            reduced_from: (table.dtype() != DType::F32).then(|| w.clone()),
            table: Table::Dense(table),
        })
    }

    /// `table` quantized to `dtype` blocks (the type `quantization` picks for its rows).
    fn quantized(table: &Tensor, dtype: GgmlDType, quantization: Quantization) -> Result<Self> {
        let (rows, dim) = table.dims2()?;
        let q = QTensor::quantize(&table.to_dtype(DType::F32)?.contiguous()?, dtype)?;
        let blocks = BlockRows::of(&q)?.ok_or_else(|| Error::Unsupported {
            what: format!(
                "an embedding table of {rows}x{dim} in {} ({dtype:?} blocks)",
                quantization.name()
            ),
        })?;
        Ok(Embedding {
            table: Table::Blocks(Arc::new(blocks)),
            reduced_from: None,
        })
    }

    /// A table computed rather than loaded (fixed sinusoidal positions).
    pub fn from_table(table: Tensor) -> Self {
        Embedding {
            table: Table::Dense(table),
            reduced_from: None,
        }
    }

    /// `ids`: `[n]` u32 → `[n, dim]` f32. In a training pass a trainable table's rows are a
    /// leaf of their own ([`training::LookedUp`]).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        match &self.table {
            Table::Dense(table) => {
                if let Some(rows) = training::record_lookup(table, ids)? {
                    return Ok(rows);
                }
                Ok(table.index_select(ids, 0)?.to_dtype(DType::F32)?)
            }
            Table::Blocks(blocks) => {
                let ids = ids.to_dtype(DType::U32)?.to_vec1::<u32>()?;
                let mut gathered = Vec::with_capacity(ids.len() * blocks.row_bytes);
                for &id in &ids {
                    let id = id as usize;
                    if id >= blocks.rows {
                        return Err(candle_core::Error::InvalidIndex {
                            op: "embedding",
                            index: id,
                            size: blocks.rows,
                        }
                        .into());
                    }
                    gathered.extend_from_slice(
                        &blocks.bytes[id * blocks.row_bytes..(id + 1) * blocks.row_bytes],
                    );
                }
                if ids.is_empty() {
                    return Ok(Tensor::zeros((0, blocks.dim), DType::F32, &Device::Cpu)?);
                }
                let rows = qtensor_from_ggml(
                    blocks.dtype,
                    &gathered,
                    vec![ids.len(), blocks.dim],
                    &Device::Cpu,
                )?;
                Ok(rows.dequantize(&Device::Cpu)?)
            }
        }
    }

    /// Whether the table is kept as a dense f32 tensor.
    pub fn is_dense_f32(&self) -> bool {
        matches!(&self.table, Table::Dense(t) if t.dtype() == DType::F32)
    }

    /// `(rows, dim)` (`(0, 0)` for a table that is not a matrix).
    pub fn dims(&self) -> (usize, usize) {
        match &self.table {
            Table::Dense(table) => table.dims2().unwrap_or((0, 0)),
            Table::Blocks(blocks) => (blocks.rows, blocks.dim),
        }
    }

    /// Where the table lives (quantized tables on the CPU).
    pub fn device(&self) -> &Device {
        match &self.table {
            Table::Dense(table) => table.device(),
            Table::Blocks(_) => &Device::Cpu,
        }
    }

    /// The table as a tensor: itself when it is dense (in the dtype it is kept in), widened
    /// to f32 when it is quantized (a copy: for checks, not for every forward pass).
    pub fn dense_table(&self) -> Result<Tensor> {
        match &self.table {
            Table::Dense(table) => Ok(table.clone()),
            Table::Blocks(blocks) => Ok(blocks.qtensor()?.dequantize(&Device::Cpu)?),
        }
    }

    /// Rows `range` widened to f32, row after row (`range.len() · dim` values): checks read
    /// a table a chunk at a time, so that a quantized or half one is never widened whole.
    pub fn rows_f32(&self, range: std::ops::Range<usize>) -> Result<Vec<f32>> {
        let (rows, _) = self.dims();
        if range.start > range.end || range.end > rows {
            return Err(candle_core::Error::InvalidIndex {
                op: "embedding rows",
                index: range.end,
                size: rows,
            }
            .into());
        }
        let values = match &self.table {
            Table::Dense(table) => table.narrow(0, range.start, range.len())?,
            Table::Blocks(blocks) => qtensor_from_ggml(
                blocks.dtype,
                &blocks.bytes[range.start * blocks.row_bytes..range.end * blocks.row_bytes],
                vec![range.len(), blocks.dim],
                &Device::Cpu,
            )?
            .dequantize(&Device::Cpu)?,
        };
        Ok(values
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?)
    }

    /// Rows `ids` widened to f32, in the order given (`ids.len() · dim` values), gathered
    /// 8,192 at a time so that only the result is held whole (the canary gathers tens of
    /// thousands of rows of a 262,144-row vocabulary).
    pub fn gather_f32(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let mut values = Vec::with_capacity(ids.len() * self.dims().1);
        for chunk in ids.chunks(8_192) {
            let chunk = Tensor::new(chunk, self.device())?;
            let rows = self
                .forward(&chunk)?
                .to_device(&Device::Cpu)?
                .flatten_all()?;
            values.extend_from_slice(&rows.to_vec1::<f32>()?);
        }
        Ok(values)
    }

    /// The table as the checkpoint holds it, in f32: read anew from the checkpoint when the
    /// load rounded or quantized it (a fingerprint of the model, not of its precision), else
    /// this table.
    pub fn checkpoint_table(&self) -> Result<Embedding> {
        match &self.reduced_from {
            Some(source) => {
                let (rows, dim) = self.dims();
                Ok(Embedding::from_table(source.get([rows, dim], "weight")?))
            }
            None => Ok(self.clone()),
        }
    }

    /// A linear layer computing `x · tableᵀ` (a tied output projection: an LM head, an MLM
    /// decoder), in the table's own precision, or in f32 read anew from the checkpoint when
    /// the weights it was loaded from keep outputs so ([`Weights::keeps_output_in_f32`]).
    pub fn tied_projection(&self, bias: Option<Tensor>) -> Result<Linear> {
        if let Some(source) = self.reduced_from.as_ref() {
            if source.keeps_output_in_f32() {
                let (rows, dim) = self.dims();
                return Linear::from_parts(source.get([rows, dim], "weight")?, bias);
            }
        }
        match &self.table {
            Table::Dense(table) => Linear::from_parts(table.clone(), bias),
            Table::Blocks(blocks) => Linear::from_qtensor(Arc::new(blocks.qtensor()?), bias),
        }
    }
}

impl BlockRows {
    /// The rows of a CPU `[rows, dim]` tensor of whole blocks; `None` otherwise.
    fn of(q: &QTensor) -> Result<Option<Self>> {
        let Ok((rows, dim)) = q.shape().dims2() else {
            return Ok(None);
        };
        let dtype = q.dtype();
        if !q.device().is_cpu() || !dim.is_multiple_of(dtype.block_size()) {
            return Ok(None);
        }
        let bytes = q.data()?.into_owned();
        let row_bytes = dim / dtype.block_size() * dtype.type_size();
        Ok((bytes.len() == rows * row_bytes).then_some(BlockRows {
            rows,
            dim,
            dtype,
            bytes,
            row_bytes,
        }))
    }

    fn qtensor(&self) -> Result<QTensor> {
        Ok(qtensor_from_ggml(
            self.dtype,
            &self.bytes,
            vec![self.rows, self.dim],
            &Device::Cpu,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantized_rows_are_the_dequantized_table_rows() {
        let device = Device::Cpu;
        let table = Tensor::randn(0f32, 1.0, (50, 64), &device).unwrap();
        let dtype = Quantization::Q8_0.block_type(64).unwrap();
        let embedding = Embedding::quantized(&table, dtype, Quantization::Q8_0).unwrap();
        let ids = Tensor::new(&[3u32, 49, 3, 0], &device).unwrap();
        let got = embedding.forward(&ids).unwrap();
        let expected = embedding
            .dense_table()
            .unwrap()
            .index_select(&ids, 0)
            .unwrap();
        assert_eq!(
            got.to_vec2::<f32>().unwrap(),
            expected.to_vec2::<f32>().unwrap()
        );
        let err = embedding
            .forward(&Tensor::new(&[50u32], &device).unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("50"), "{err}");
        assert_eq!(embedding.dims(), (50, 64));
    }
}
