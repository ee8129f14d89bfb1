//! Sentence pooling over each sequence's rows, as sentence-transformers' `Pooling` module.

use crate::batch::RaggedBatch;
use crate::error::Result;
use candle_core::{Tensor, D};

/// How token vectors become one sentence vector (`1_Pooling/config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Average of all token vectors (special tokens included, as sentence-transformers does
    /// with an all-ones attention mask).
    Mean,
    /// The first token's vector (`[CLS]` / `<s>`).
    Cls,
    /// Elementwise maximum over the tokens.
    Max,
    /// The last token's vector.
    LastToken,
}

/// `hidden`: `[total_tokens, dim]` → `[num_seqs, dim]`.
pub fn pool(hidden: &Tensor, batch: &RaggedBatch, pooling: Pooling) -> Result<Tensor> {
    let rows = (0..batch.num_seqs())
        .map(|i| {
            let range = batch.seq_range(i);
            let len = range.len();
            let seq = hidden.narrow(0, range.start, len)?;
            match pooling {
                Pooling::Mean => seq.mean(0),
                Pooling::Max => seq.max(0),
                Pooling::Cls => seq.get(0),
                Pooling::LastToken => seq.get(len - 1),
            }
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::stack(&rows, 0)?)
}

/// Divides each row by its L2 norm (with PyTorch's `F.normalize` floor of 1e-12).
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?;
    Ok(x.broadcast_div(&norm)?)
}
